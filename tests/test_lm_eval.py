"""The `imsm` lm-eval model type against lm-eval's own `hf` model, offline, on a tiny random model.

With the tuned branch alone (`fusion=none`) every request type gives what `hf` with `peft=` the
same adapter gives; a decisive gate moves the scores; a fresh LoRA adapter is the base model. The
`imsm_*` task YAMLs mirror lm-eval's own configs of the same benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

lm_eval = pytest.importorskip("lm_eval")  # the `lm-eval` extra; `make setup` installs it

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from conftest import perturb_adapter, save_tiny_model, tiny_model  # noqa: E402
from imsm import IMSMConfig, get_imsm_model  # noqa: E402
from imsm.cli.model_options import ModelOptions  # noqa: E402
from imsm.errors import IMSMError  # noqa: E402
from imsm.lm_eval import IMSMLM, write_task_configs  # noqa: E402
from imsm.lm_eval import tasks as imsm_tasks  # noqa: E402
from imsm.model.variant import load_evaluated_model  # noqa: E402

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"], "lora_dropout": 0.0}
TASK = "tiny_choice"
# Contexts and choices in the tiny tokenizer's words; two questions share a context.
QUESTIONS = [
    ("w5 w17 w33", ["w8", "w9 w10", "w11 w12 w13"], 0),
    ("w40 w41", ["w50 w51", "w52"], 1),
    ("w40 w41", ["w60", "w61 w62 w63"], 1),
    ("w70 w71 w72 w73 w74", ["w80", "w81", "w82", "w83"], 3),
    ("w90", ["w3 w4", "w6 w7"], 0),
]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny model directory, three adapters and a local multiple-choice task."""
    root = tmp_path_factory.mktemp("lm_eval")
    paths = {"model": str(save_tiny_model(root / "model"))}

    lora = get_peft_model(tiny_model("llama"), LoraConfig(**LORA))  # a plain peft adapter, moved off B=0
    perturb_adapter(lora)
    lora.save_pretrained(root / "lora")
    paths["lora"] = str(root / "lora")

    fresh = get_peft_model(tiny_model("llama"), LoraConfig(**LORA))  # B=0: the base model's function
    fresh.save_pretrained(root / "fresh")
    paths["fresh"] = str(root / "fresh")

    gated = get_imsm_model(tiny_model("llama"), LoraConfig(**LORA), IMSMConfig(fusion="imsm"))
    perturb_adapter(gated)
    with torch.no_grad():
        torch.nn.init.normal_(gated.gate.W_B, std=2.0)  # a decisive gate, so fusion matters
    gated.save_pretrained(str(root / "gated"))
    paths["gated"] = str(root / "gated")

    data = root / "task" / "data.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps({"q": q, "choices": c, "label": g}) + "\n" for q, c, g in QUESTIONS))
    (root / "task" / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "output_type: multiple_choice\n"
        "test_split: test\n"
        'doc_to_text: "{{q}}"\n'
        "doc_to_target: label\n"
        'doc_to_choice: "{{choices}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    paths["tasks"] = str(root / "task")
    return paths


def sample_log_likelihoods(workspace, model, model_args=None) -> list[float]:
    """Every (question, choice) log-likelihood of the local task, in document order."""
    results = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[TASK],
        task_manager=TaskManager(include_path=workspace["tasks"], include_defaults=False),
        batch_size=2,
        device="cpu",
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = sorted(results["samples"][TASK], key=lambda sample: sample["doc_id"])
    return [float(response[0][0]) for sample in samples for response in sample["resps"]]


def hf_log_likelihoods(workspace, peft=None) -> list[float]:
    model_args = {"pretrained": workspace["model"], "dtype": "float32"}
    if peft is not None:
        model_args["peft"] = workspace[peft]
    return sample_log_likelihoods(workspace, "hf", model_args)


def imsm_log_likelihoods(workspace, adapter=None, **model_args) -> list[float]:
    model_args = {"pretrained": workspace["model"], "dtype": "fp32", **model_args}
    if adapter is not None:
        model_args["adapter"] = workspace[adapter]
    return sample_log_likelihoods(workspace, "imsm", model_args)


def assert_close(actual, expected, tolerance=1e-4):
    assert len(actual) == len(expected) == sum(len(choices) for _, choices, _ in QUESTIONS)
    assert max(abs(a - e) for a, e in zip(actual, expected, strict=True)) < tolerance


@pytest.mark.parametrize(
    ("adapter", "fusion"),
    [("lora", "saved"), ("lora", "none"), ("gated", "none")],
    ids=["plain-peft-adapter", "fusion-none-given", "imsm-adapter-as-fusion-none"],
)
def test_fusion_none_gives_lm_eval_hf_with_the_same_peft_adapter(workspace, adapter, fusion):
    # lm-eval's argument parser turns the word "none" into None; the model type reads it back.
    args = {} if fusion == "saved" else {"fusion": None}
    assert_close(imsm_log_likelihoods(workspace, adapter, **args), hf_log_likelihoods(workspace, peft=adapter))


def test_a_gate_moves_the_log_likelihoods_away_from_the_adapter_alone(workspace):
    gated = imsm_log_likelihoods(workspace, "gated")
    tuned_alone = hf_log_likelihoods(workspace, peft="gated")
    assert max(abs(a - b) for a, b in zip(gated, tuned_alone, strict=True)) > 1e-2


def test_log_likelihoods_with_a_frozen_state_store_equal_those_without(workspace, tmp_path):
    store = tmp_path / "states"
    plain = imsm_log_likelihoods(workspace, "gated")
    assert_close(imsm_log_likelihoods(workspace, "gated", frozen_states=str(store)), plain, 1e-5)  # builds
    assert list(store.glob("*/lm_eval.safetensors"))
    assert_close(imsm_log_likelihoods(workspace, "gated", frozen_states=str(store)), plain, 1e-5)  # reads


def test_a_fresh_adapter_gives_the_base_model(workspace):
    base = hf_log_likelihoods(workspace)
    assert_close(imsm_log_likelihoods(workspace, "fresh"), base)
    assert_close(imsm_log_likelihoods(workspace), base)  # no adapter at all
    assert_close(imsm_log_likelihoods(workspace, "fresh", fusion="mean"), base)  # equal branches, any mix


def test_a_model_instance_is_accepted_and_says_how_it_was_made(workspace):
    model = IMSMLM(pretrained=workspace["model"], adapter=workspace["lora"], dtype="fp32", device="cpu")
    assert_close(sample_log_likelihoods(workspace, model), hf_log_likelihoods(workspace, peft="lora"))
    info = model.get_model_info()
    assert info["fusion"] == "none" and info["adapter"] == workspace["lora"] and info["model_dtype"] == "float32"


def test_reduce_intruders_loads_the_model_imsm_eval_loads(workspace):
    """lm-eval passes model arguments as text; the reduced adapter is the one `imsm eval` reduces."""
    ours = IMSMLM(
        pretrained=workspace["model"], adapter=workspace["lora"], reduce_intruders="0.5", dtype="fp32", device="cpu"
    )
    options = ModelOptions(model=workspace["model"], adapter=workspace["lora"], reduce_intruders=0.5, dtype="fp32")
    reference, _ = load_evaluated_model(options)
    input_ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        reduced, expected = ours.model(input_ids=input_ids).logits, reference(input_ids=input_ids).logits
    torch.testing.assert_close(reduced, expected)


def _pair(workspace, adapter="lora", max_length=None):
    """The imsm model type (tuned branch alone) and lm-eval's `hf` with the same adapter."""
    ours = IMSMLM(
        pretrained=workspace["model"],
        adapter=workspace[adapter],
        fusion=None,  # what lm-eval's argument parser makes of `fusion=none`
        dtype="fp32",
        device="cpu",
        max_length=max_length,
    )
    peers = HFLM(
        pretrained=workspace["model"], peft=workspace[adapter], dtype="float32", device="cpu", max_length=max_length
    )
    return ours, peers


def _requests(request_type: str, arguments: list[tuple]) -> list[Instance]:
    return [Instance(request_type, {}, args, index) for index, args in enumerate(arguments)]


def test_empty_contexts_and_long_ones_are_read_as_lm_eval_reads_them(workspace):
    ours, peers = _pair(workspace, max_length=8)  # "w3 ... w14" + continuation is cut from the left
    pairs = [("", "w5 w6 w7"), ("w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14", " w20 w21"), ("w3 ", "w9")]
    mine = ours.loglikelihood(_requests("loglikelihood", pairs))
    theirs = peers.loglikelihood(_requests("loglikelihood", pairs))
    assert [greedy for _, greedy in mine] == [greedy for _, greedy in theirs]
    assert max(abs(a - b) for (a, _), (b, _) in zip(mine, theirs, strict=True)) < 1e-4


def test_rolling_log_likelihood_over_several_windows_equals_lm_eval_hf(workspace):
    ours, peers = _pair(workspace, max_length=8)  # 8-token windows: the texts span up to four
    texts = [" ".join(f"w{i}" for i in range(3, 3 + length)) for length in (1, 7, 8, 9, 30)]
    mine = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,) for text in texts]))
    theirs = peers.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,) for text in texts]))
    assert max(abs(a - b) for a, b in zip(mine, theirs, strict=True)) < 1e-4


def test_rolling_with_a_gate_differs_from_the_adapter_alone(workspace):
    ours, peers = _pair(workspace, adapter="gated", max_length=8)
    gated = IMSMLM(pretrained=workspace["model"], adapter=workspace["gated"], dtype="fp32", device="cpu", max_length=8)
    text = [(" ".join(f"w{i}" for i in range(3, 23)),)]
    tuned_alone = peers.loglikelihood_rolling(_requests("loglikelihood_rolling", text))
    assert abs(ours.loglikelihood_rolling(_requests("loglikelihood_rolling", text))[0] - tuned_alone[0]) < 1e-4
    assert abs(gated.loglikelihood_rolling(_requests("loglikelihood_rolling", text))[0] - tuned_alone[0]) > 1e-2


def test_generate_until_honours_until_and_max_gen_toks_as_lm_eval_hf_does(workspace):
    ours, peers = _pair(workspace)
    prompts = ["w5 w17 w33", "w40 w41", "w70 w71 w72 w73 w74"]
    free = ours.generate_until(_requests("generate_until", [(p, {"until": [], "max_gen_toks": 6}) for p in prompts]))
    assert all(0 < len(answer.split()) <= 6 for answer in free)
    # Stop at the third generated word of the first prompt: the answer is what came before it.
    stop = free[0].split()[2]
    cut = free[0][: free[0].index(stop)]
    requests = [(p, {"until": [stop], "max_gen_toks": 6, "do_sample": False}) for p in prompts]
    requests += [(p, {"until": ["w999"], "max_gen_toks": 2}) for p in prompts]  # a second gen_kwargs group
    mine = ours.generate_until(_requests("generate_until", requests))
    assert mine[0] == cut
    assert all(len(answer.split()) <= 2 and answer.strip() in text for answer, text in zip(mine[3:], free, strict=True))
    assert mine == peers.generate_until(_requests("generate_until", requests))


@pytest.mark.parametrize(
    ("gen_kwargs", "named"),
    [({"do_sample": True, "temperature": 0.7}, "do_sample"), ({"until": ["w9"], "top_p": 0.9}, "top_p")],
)
def test_sampling_is_refused_naming_the_arguments(workspace, gen_kwargs, named):
    ours = IMSMLM(pretrained=workspace["model"], dtype="fp32", device="cpu")
    with pytest.raises(IMSMError, match=f"decodes greedily.*{named}"):
        ours.generate_until(_requests("generate_until", [("w5 w6", gen_kwargs)]))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"fusion": "imsm"}, "needs an adapter"),
        ({"adapter": "lora", "fusion": "imsm"}, "needs a gate trained as 'imsm'"),
        ({"adapter": "gated", "fusion": "no-query"}, "needs a gate trained as 'no-query'"),
        ({"fusion": "gated"}, "unknown fusion 'gated'"),
        ({"batch_size": "auto"}, "batch_size must be an integer"),
        ({"reduce_intruders": 0.5}, "reduce_intruders needs an adapter"),
    ],
)
def test_bad_model_args_say_what_to_pass(workspace, arguments, message):
    arguments = {key: workspace.get(value, value) if key == "adapter" else value for key, value in arguments.items()}
    with pytest.raises(IMSMError, match=message):
        IMSMLM(pretrained=workspace["model"], dtype="fp32", device="cpu", **arguments)


# ------------------------------------------------------------------------------------------------
# The imsm_* tasks: lm-eval's own configs, reading the local files.

ROWS = {
    "arc_easy/test.jsonl": {
        "id": "Mercury_1",
        "question": "Which gas do plants take in?",
        "choices": {"text": ["oxygen", "carbon dioxide", "helium"], "label": ["1", "2", "3"]},
        "answerKey": "2",
    },
    "arc_challenge/test.jsonl": {
        "id": "Mercury_2",
        "question": "What melts ice?",
        "choices": {"text": ["heat", "cold"], "label": ["A", "B"]},
        "answerKey": "A",
    },
    "piqa/validation.jsonl": {"goal": "dresser", "sol1": "replace drawer ", "sol2": "finish  it", "label": 1},
    "sciq/test.jsonl": {
        "question": "What do plants need?",
        "distractor3": "salt",
        "distractor1": "sand",
        "distractor2": "oil",
        "correct_answer": "light",
        "support": "  \nPlants need light.",
    },
    "winogrande/dev.jsonl": {
        "qID": "x-1",
        "sentence": "Sarah was a better surgeon than Maria so _ got the harder cases.",
        "option1": "Sarah",
        "option2": "Maria",
        "answer": "1",
    },
}
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"
MIRRORS = {
    "imsm_arc_easy": "arc/arc_easy.yaml",
    "imsm_arc_challenge": "arc/arc_challenge.yaml",
    "imsm_piqa": "piqa/piqa.yaml",
    "imsm_sciq": "sciq/sciq.yaml",
}


@pytest.fixture(scope="module")
def knowledge_tasks(tmp_path_factory):
    """The imsm_* tasks loaded by lm-eval's TaskManager over a data directory of real-format rows."""
    root = tmp_path_factory.mktemp("knowledge")
    for relative, row in ROWS.items():
        (root / "data" / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / "data" / relative).write_text(json.dumps(row) + "\n")
    include = write_task_configs(root / "data", root / "tasks")
    manager = TaskManager(include_path=str(include), include_defaults=False)
    names = [*MIRRORS, "imsm_winogrande"]
    return {name: manager.load([name])["tasks"][name] for name in names}


def _first_requests(task) -> list[tuple]:
    """The (context, continuation) requests lm-eval builds for the task's first document."""
    task.build_all_requests(limit=1)
    return [request.args for request in task.instances]


def test_the_knowledge_tasks_read_the_local_files_with_lm_evals_prompts(knowledge_tasks):
    assert _first_requests(knowledge_tasks["imsm_arc_easy"]) == [
        ("Question: Which gas do plants take in?\nAnswer:", f" {choice}")
        for choice in ["oxygen", "carbon dioxide", "helium"]
    ]
    assert knowledge_tasks["imsm_arc_easy"].doc_to_target(knowledge_tasks["imsm_arc_easy"].eval_docs[0]) == 1
    assert [c for _, c in _first_requests(knowledge_tasks["imsm_arc_challenge"])] == [" heat", " cold"]
    assert _first_requests(knowledge_tasks["imsm_piqa"]) == [
        ("Question: dresser\nAnswer:", " replace drawer "),
        ("Question: dresser\nAnswer:", " finish  it"),
    ]
    sciq = _first_requests(knowledge_tasks["imsm_sciq"])
    assert sciq[0][0] == "Plants need light.\nQuestion: What do plants need?\nAnswer:"
    assert [c for _, c in sciq] == [" sand", " oil", " salt", " light"]
    assert _first_requests(knowledge_tasks["imsm_winogrande"]) == [
        ("Sarah was a better surgeon than Maria so Sarah", " got the harder cases."),
        ("Sarah was a better surgeon than Maria so Maria", " got the harder cases."),
    ]


@pytest.mark.parametrize("name", sorted(MIRRORS))
def test_each_task_config_is_lm_evals_own_but_for_name_and_data(name, knowledge_tasks):
    ours = knowledge_tasks[name].config.to_dict()
    from lm_eval.tasks._yaml_loader import load_yaml

    theirs = load_yaml(LM_EVAL_TASKS / MIRRORS[name])
    for field in ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "metric_list"):
        assert str(ours[field]) == str(theirs[field]), field


def test_winogrande_functions_equal_lm_evals(knowledge_tasks):
    from lm_eval.tasks.winogrande import preprocess_winogrande as theirs

    for answer in ("1", "2"):
        record = {**ROWS["winogrande/dev.jsonl"], "answer": answer}
        assert imsm_tasks.winogrande_gold(record) == theirs.doc_to_text(record)
        assert imsm_tasks.winogrande_continuation(record) == theirs.doc_to_target(record)
        assert imsm_tasks.winogrande_contexts(record) == theirs.doc_to_choice(record)


def test_the_command_line_asks_for_a_data_directory_for_local_tasks(monkeypatch, capsys):
    from imsm.lm_eval.__main__ import main

    monkeypatch.delenv("IMSM_DATA_DIR", raising=False)
    assert main(["--model", "imsm", "--tasks", "imsm_arc_easy,imsm_piqa"]) == 2
    assert "imsm_arc_easy, imsm_piqa read local JSON files; pass --data-dir DIR" in capsys.readouterr().err


@pytest.mark.slow
def test_the_command_line_runs_lm_evals_own_with_the_imsm_model_type(workspace, knowledge_tasks, tmp_path, capsys):
    from imsm.lm_eval.__main__ import main

    data = Path(knowledge_tasks["imsm_arc_easy"].config.dataset_kwargs["data_files"]["test"]).parents[1]
    arguments = ["--model", "imsm", "--model_args", f"pretrained={workspace['model']},dtype=fp32"]
    arguments += ["--tasks", "imsm_arc_easy,imsm_winogrande", "--device", "cpu", "--data-dir", str(data)]
    assert main(arguments) == 0
    table = capsys.readouterr().out
    assert "imsm_arc_easy" in table and "imsm_winogrande" in table and "acc" in table
