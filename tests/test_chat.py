"""`imsm generate` with sampling and streaming, and `imsm chat`: a scripted conversation through a
tiny model's chat template, with /reset and /exit, each reply streamed as it is decoded."""

from __future__ import annotations

import io
import json

import pytest
import torch

from conftest import save_tiny_model
from imsm.chat import Conversation, run_chat
from imsm.cli import main
from imsm.config import IMSMConfig
from imsm.model.load import load_model_and_tokenizer
from imsm.model.siamese import IMSMModel

TEMPLATE = (
    "{% for m in messages %}<s> {{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}<s> {% endif %}"
)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny model directory whose tokenizer has a chat template."""
    directory = save_tiny_model(tmp_path_factory.mktemp("chat") / "model")
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = TEMPLATE
    config_path.write_text(json.dumps(config))
    return str(directory)


def conversation(chat_model, system=None, **options):
    base, tokenizer = load_model_and_tokenizer(chat_model, "fp32", "cpu")
    model = IMSMModel(base, IMSMConfig(fusion="none")).eval()
    return Conversation(model, tokenizer, system, {"max_new_tokens": 3, "eos_token_id": [], **options})


def test_a_scripted_conversation_keeps_history_resets_and_stops_at_exit(chat_model):
    chat = conversation(chat_model, system="w90")
    output = io.StringIO()
    replies = run_chat(chat, io.StringIO("w5 w6\n\nw7\n/reset\nw8\n/exit\nw9\n"), output)
    assert replies == 3  # the empty line is skipped and nothing after /exit is read
    assert "(conversation reset)" in output.getvalue()
    # After the reset: the system message, the last question and its answer only.
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant"]
    assert chat.messages[1]["content"] == "w8"
    # What was streamed is what was kept, reply by reply.
    streamed = [line.strip() for line in output.getvalue().splitlines() if line.strip() != "(conversation reset)"]
    assert streamed[-1] == chat.messages[2]["content"] and len(streamed) == 3


def test_each_turn_sees_the_whole_conversation(chat_model, monkeypatch):
    chat = conversation(chat_model)
    prompts = []  # the token ids each turn asks the model to continue
    generate = chat.model.generate

    def recording(ids, **options):
        prompts.append(ids[0].tolist())
        return generate(ids, **options)

    monkeypatch.setattr(chat.model, "generate", recording)
    first = chat.reply("w5 w6", io.StringIO())
    followed = chat.reply("w7", io.StringIO())
    assert [m["content"] for m in chat.messages] == ["w5 w6", first, "w7", followed]
    # The second prompt is the whole conversation through the template: the first question, the
    # reply the model gave, then the new question, whatever that reply holds (even nothing).
    text = f"<s> w5 w6 </s> <s> {first} </s> <s> w7 </s> <s> "
    assert prompts == [
        chat.tokenizer("<s> w5 w6 </s> <s> ", add_special_tokens=False)["input_ids"],
        chat.tokenizer(text, add_special_tokens=False)["input_ids"],
    ]
    # And the reply kept is the model's greedy continuation of that prompt.
    sequences = generate(torch.tensor([prompts[1]]), max_new_tokens=3, eos_token_id=[])
    assert followed == chat.tokenizer.decode(sequences[0, len(prompts[1]) :], skip_special_tokens=True).strip()


def test_chat_command_reads_a_pipe_and_refuses_a_model_without_a_template(chat_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("w5 w6\n/exit\n"))
    assert main(["chat", "--model", chat_model, "--dtype", "fp32", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip() != ""
    plain = str(save_tiny_model(tmp_path / "plain"))
    monkeypatch.setattr("sys.stdin", io.StringIO("w5\n"))
    assert main(["chat", "--model", plain, "--dtype", "fp32"]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imsm")]  # not progress bars
    assert len(error) == 1 and "has no chat template; use `imsm generate" in error[0]


def test_generate_streams_what_it_would_print_and_samples_repeatably(chat_model, capsys):
    common = ["generate", "--model", chat_model, "--dtype", "fp32", "--prompt", "w5 w6", "--max-new-tokens", "4"]
    assert main(common) == 0
    printed = capsys.readouterr().out.strip()
    assert main([*common, "--stream"]) == 0
    assert capsys.readouterr().out.strip() == printed
    sampled = [*common, "--do-sample", "--temperature", "3.0", "--seed", "7"]
    assert main(sampled) == 0
    first = capsys.readouterr().out
    assert main(sampled) == 0 and capsys.readouterr().out == first
    assert main([*common, "--top-k", "0", "--top-p", "0.5", "--do-sample", "--seed", "1"]) == 0


def test_generate_refuses_a_stop_it_cannot_honour_in_one_line(chat_model, capsys):
    code = main(
        ["generate", "--model", chat_model, "--dtype", "fp32", "--prompt", "w5", "--do-sample", "--temperature", "0"]
    )
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imsm")]
    assert code == 2 and len(error) == 1 and "temperature must be > 0 when sampling" in error[0]
