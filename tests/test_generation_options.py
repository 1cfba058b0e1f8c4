"""`IMSMModel.generate` takes transformers' generation options: a GenerationConfig, sampling and its
warpers, a repetition penalty, stop strings and streamers, all transformers' own pieces acting on
the fused logits. With the tuned branch alone it samples exactly what transformers' `generate`
samples from the same seed; what the siamese decoder cannot do is refused by name.
"""

from __future__ import annotations

import string

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, PreTrainedTokenizerFast, TextStreamer
from transformers.generation.streamers import BaseStreamer

from conftest import VOCAB, peft_config, perturb_adapter, random_batch, tiny_model, tiny_tokenizer
from imsm import IMSMConfig, IMSMError, get_imsm_model

NEW = 8


def build(fusion: str = "imsm"):
    model = get_imsm_model(tiny_model("llama"), peft_config("lora", "llama"), IMSMConfig(fusion=fusion))
    perturb_adapter(model)
    if model.gate is not None:
        torch.nn.init.normal_(model.gate.W_B, std=2.0)  # a decisive gate, so fusion matters
    model.peft_model.get_base_model().generation_config.eos_token_id = None  # run every row to the cap
    return model.eval()


def transformers_generate(model, input_ids, attention_mask, seed, **options):
    torch.manual_seed(seed)
    return model.peft_model.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=NEW, pad_token_id=0, **options
    )


def imsm_generate(model, input_ids, attention_mask, seed, **options):
    torch.manual_seed(seed)
    return model.generate(input_ids, attention_mask, max_new_tokens=NEW, eos_token_id=[], **options)


SETTINGS = [
    {"do_sample": True},  # transformers' defaults: temperature 1, the 50 likeliest tokens
    {"do_sample": True, "temperature": 0.7, "top_k": 5},
    {"do_sample": True, "top_p": 0.8, "top_k": 0},
    {"do_sample": True, "min_p": 0.1, "temperature": 1.5},
    {"do_sample": True, "repetition_penalty": 1.5, "top_k": 20},
    {"do_sample": False, "repetition_penalty": 2.0},
]


@pytest.mark.parametrize("options", SETTINGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_the_tuned_branch_alone_samples_what_transformers_samples(options):
    model = build("none")
    input_ids, attention_mask = random_batch()
    for seed in (0, 1):
        ours = imsm_generate(model, input_ids, attention_mask, seed, **options)
        theirs = transformers_generate(model, input_ids, attention_mask, seed, **options)
        assert torch.equal(ours, theirs)


def test_sampling_is_repeated_by_the_seed_and_varies_without_it():
    model = build("imsm")
    input_ids, attention_mask = random_batch()
    first = imsm_generate(model, input_ids, attention_mask, 3, do_sample=True, temperature=2.0)
    assert torch.equal(imsm_generate(model, input_ids, attention_mask, 3, do_sample=True, temperature=2.0), first)
    others = [imsm_generate(model, input_ids, attention_mask, seed, do_sample=True, temperature=2.0) for seed in (4, 5)]
    assert any(not torch.equal(other, first) for other in others)


def test_greedy_is_the_default_and_a_generation_config_is_read_not_changed():
    model = build("imsm")
    input_ids, attention_mask = random_batch()
    greedy = model.generate(input_ids, attention_mask, max_new_tokens=NEW, eos_token_id=[])
    config = GenerationConfig(max_new_tokens=NEW, eos_token_id=[], do_sample=False)
    assert torch.equal(model.generate(input_ids, attention_mask, generation_config=config), greedy)
    # A model whose own generation config asks for sampling still decodes greedily unless told.
    model.peft_model.get_base_model().generation_config.do_sample = True
    assert torch.equal(model.generate(input_ids, attention_mask, max_new_tokens=NEW, eos_token_id=[]), greedy)
    # Keywords win over the config, which is left as it was.
    sampled = model.generate(input_ids, attention_mask, generation_config=config, do_sample=True, temperature=5.0)
    assert config.do_sample is False and sampled.shape == greedy.shape


def character_tokenizer():
    """One token per character (ids 3-95), the kind of vocabulary StopStringCriteria can read."""
    characters = (string.ascii_letters + string.digits + string.punctuation)[: VOCAB - 3]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(characters)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<pad>"
    )


def test_a_stop_string_ends_the_row_that_produced_it():
    model, tokenizer = build("imsm"), character_tokenizer()
    prompt = torch.tensor([[5, 17, 33, 40]])
    free = model.generate(prompt, max_new_tokens=NEW, eos_token_id=[])[0, 4:].tolist()
    stop = tokenizer.decode(free[2:4])  # the text of the third and fourth new tokens
    stopped = model.generate(prompt, max_new_tokens=NEW, eos_token_id=[], stop_strings=[stop], tokenizer=tokenizer)
    text = tokenizer.decode(free)
    end = next(i for i in range(1, NEW + 1) if stop in tokenizer.decode(free[:i]))  # tokens up to the stop
    assert stop in text and stopped[0, 4:].tolist() == free[:end]
    with pytest.raises(IMSMError, match="stop_strings needs the tokenizer"):
        model.generate(prompt, max_new_tokens=NEW, stop_strings=["w5"])


def test_several_stop_tokens_each_end_a_row():
    model = build("imsm")
    prompt = torch.tensor([[5, 17, 33, 40]])
    free = model.generate(prompt, max_new_tokens=NEW, eos_token_id=[])[0, 4:].tolist()
    stops = [free[3], 95 if free[3] != 95 else 94]  # one that occurs, one that (probably) does not
    first = free.index(free[3])
    assert model.generate(prompt, max_new_tokens=NEW, eos_token_id=stops)[0, 4:].tolist() == free[: first + 1]


class Recorder(BaseStreamer):
    def __init__(self):
        self.pieces, self.ended = [], False

    def put(self, value):
        self.pieces.append(value.clone())

    def end(self):
        self.ended = True


def test_a_streamer_gets_the_prompt_then_every_new_token(capsys):
    model = build("imsm")
    prompt = torch.tensor([[5, 17, 33, 40]])
    recorder = Recorder()
    output = model.generate(prompt, max_new_tokens=NEW, eos_token_id=[], streamer=recorder)
    assert torch.equal(recorder.pieces[0], prompt) and recorder.ended
    assert torch.cat(recorder.pieces[1:]).tolist() == output[0, 4:].tolist()
    tokenizer = tiny_tokenizer()
    model.generate(prompt, max_new_tokens=NEW, eos_token_id=[], streamer=TextStreamer(tokenizer, skip_prompt=True))
    assert capsys.readouterr().out.strip() == tokenizer.decode(output[0, 4:]).strip()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_beams": 2}, "num_beams=2: beam search is not supported"),
        ({"num_return_sequences": 3}, "several sequences per prompt are not supported"),
        ({"prefill_chunk_size": 4}, "prefill chunking is not supported: the query memory needs the whole prompt"),
        ({"assistant_model": object()}, "assisted .* decoding is not supported"),
        ({"max_length": 30}, "give max_new_tokens instead of max_length"),
        ({"no_repeat_ngram_size": 2}, "no_repeat_ngram_size=2: IMSM's decoder does not support it"),
        ({"do_sample": True, "temperature": 0.0}, "temperature must be > 0 when sampling"),
        ({"tempreature": 0.5}, "unknown generation option"),
    ],
)
def test_what_the_siamese_decoder_cannot_do_is_refused_by_name(options, message):
    model = build("imsm")
    with pytest.raises(IMSMError, match=message):
        model.generate(torch.tensor([[5, 17, 33]]), max_new_tokens=2, **options)
