"""Transformers' Trainer around an `IMSMModel`: gradient checkpointing, the generation config, and
TRL's trainers refused (`imsm.IMSMTrainer` trains it)."""

from __future__ import annotations

from typing import Any

from imsm.errors import IMSMError


class TrainerCompatMixin:
    """What transformers' Trainer and peft call on a model, for a class with a `causal_lm`."""

    @staticmethod
    def checkpointing_options(options: dict[str, Any] | None) -> dict[str, Any]:
        """`torch.utils.checkpoint` options for gradient checkpointing: always non-reentrant.

        A reentrant checkpoint gives gradients only through inputs that require them. With shared
        lower layers the tuned branch starts at layer k from the frozen branch's no-grad states, so
        every checkpointed layer above would drop its graph: the adapter would get no gradient at
        all while the gate still trained and the loss still fell. So a reentrant request is refused.
        """
        options = dict(options or {})
        if options.get("use_reentrant"):
            raise IMSMError(
                "gradient checkpointing with use_reentrant=True is refused for an IMSMModel: with shared lower "
                "layers it silently leaves every adapter parameter without a gradient; pass "
                "gradient_checkpointing_kwargs={'use_reentrant': False} or leave use_reentrant out"
            )
        options["use_reentrant"] = False
        return options

    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: dict[str, Any] | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """Recompute the decoder layers' activations in the backward pass (transformers' own
        checkpointing of the causal LM), never reentrant (`checkpointing_options`). It acts on the
        tuned branch only: the frozen branch runs in evaluation mode without gradient."""
        options = self.checkpointing_options(activation_checkpointing_kwargs)
        model = self.causal_lm
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(options, every_n_layers=every_n_layers, offload=offload)
        elif every_n_layers != 1 or offload:
            raise IMSMError("every_n_layers and offload need a newer transformers (activation_checkpointing_enable)")
        else:  # earlier transformers 5 releases: the same switch under its older name
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)

    def activation_checkpointing_disable(self) -> None:
        model = self.causal_lm
        if hasattr(model, "activation_checkpointing_disable"):
            model.activation_checkpointing_disable()
        else:
            model.gradient_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        return any(getattr(module, "gradient_checkpointing", False) for module in self.causal_lm.modules())

    # transformers' older names, which peft and older trainers call.
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, **kwargs):
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.is_activation_checkpointing

    @property
    def generation_config(self):
        """The causal LM's generation config, as on a transformers model (trainers align its special
        tokens with the tokenizer's)."""
        return getattr(self.causal_lm, "generation_config", None)

    def add_model_tags(self, tags) -> None:
        """Refuse TRL's trainers, every one of which calls this from its constructor. They compute the
        loss from the causal LM's backbone and head (SFTTrainer patches `forward` with a fused LM
        head), which would train the tuned branch alone, without the frozen branch and the gate."""
        raise IMSMError(
            "an IMSMModel cannot be trained by TRL's trainers (SFTTrainer, DPOTrainer, ...): they compute the loss "
            "from the causal LM's own backbone and head, which would train the tuned branch alone, without the gate; "
            "train it with imsm.IMSMTrainer, after preparing TRL-style data with imsm.trl.sft_dataset"
        )
