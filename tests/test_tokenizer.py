"""The torch-free tokenizer gives exactly open_clip's token ids, and its spec and file errors are clean."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
from open_clip.tokenizer import SimpleTokenizer

from edgeclip.errors import BundleError, ExportError, ModelError, TokenizerError
from edgeclip.export.tokenizer import write_tokenizer
from edgeclip.runtimes.tokenizer import Tokenizer, TokenizerSpec

# fmt: off
WORDS = [
    "a", "photo", "of", "the", "cat", "dog", "sitting", "on", "red", "sofa", "diagram", "tokenizer",
    "Hello", "WORLD", "MobileCLIP", "iPhone", "e-mail", "co-operate", "x86_64", "snake_case", "camelCase",
    "café", "naïve", "Ångström", "façade", "señor", "Über", "crème", "brûlée", "smörgåsbord", "İstanbul",
    "Straße", "ǅemal", "ΟΔΟΣ", "σοφός", "Привет", "мир", "שלום", "مرحبا", "नमस्ते", "สวัสดี", "ქართული",
    "中文", "漢字テスト", "日本語", "カタカナ", "한국어", "ｆｕｌｌｗｉｄｔｈ", "Ⅻ", "½", "²", "٣٤", "①",
    "😀", "🐱‍👤", "👍🏽", "🇫🇷", "❤️", "🧑‍🔬", "™", "©", "°C", "€5", "$100", "¿qué?", "«quote»",
    "it's", "don't", "we're", "I've", "I'm", "you'll", "he'd", "IT'S", "'sun", "'Re", "rock'n'roll",
    "&amp;", "&lt;b&gt;", "&#39;", "&quot;hi&quot;", "&nbsp;", "&amp;amp;", "&#x27;", "&copy;",
    "cafÃ©", "â€œquotedâ€\x9d", "donâ€™t", "Ã¼ber", "ÐŸÑ€Ð¸Ð²ÐµÑ‚",
    "2024", "3.14159", "1,000,000", "0x1F", "v2.0-rc1", "100%", "#hashtag", "@user", "http://a.b/c?d=e",
    "!!!", "...", "—", "?!", "@#$%^&*()", "__init__", "<>", "[]{}", "\\", "~~", "'", "''", "'s's",
    "<start_of_text>", "<end_of_text>", "<START_OF_TEXT>", "<End_Of_Text>", "!<end_of_text>",
    "<start_of_text><end_of_text>", "x<end_of_text>y", "1<start_of_text>", "<ſtart_of_text>",
    "\u0345", "ſ", "'ſ", "ﬆ", "\u0558", "\ua7ce", "\U00010940", "\u200b", "\u00ad", "\ufeff", "\x00", "\x7f",
]
SEPARATORS = [" ", " ", " ", "", "  ", "\t", "\n", " \n\t ", "\u00a0", "\u3000", "\u2028", "\r\n"]
FIXED = [
    "", " ", "\t\n  \r", "\u3000\u00a0", "a", "A photo of a cat.", "<start_of_text>", "<end_of_text>",
    "<start_of_text> hello <end_of_text>", "&lt;start_of_text&gt;", "it's 'S 'll 'LL",
    "word " * 100, "supercalifragilisticexpialidocious" * 8, "😀" * 80, "中文" * 60, "a1" * 70,
]
# fmt: on


def corpus(n: int = 1200, seed: int = 0) -> list[str]:
    """Deterministic varied strings: fixed edge cases, then random mixes of WORDS and separators."""
    rng = random.Random(seed)
    cases = [str.lower, str.upper, str.title, lambda s: s, lambda s: s, lambda s: s]
    out = list(FIXED)
    while len(out) < n:
        k = rng.choice([1, 2, 3, 5, 8, 13]) if rng.random() < 0.95 else rng.randint(40, 90)
        parts = [rng.choice(cases)(rng.choice(WORDS)) for _ in range(k)]
        text = parts[0]
        for part in parts[1:]:
            text += rng.choice(SEPARATORS) + part
        if rng.random() < 0.1:
            text = rng.choice(SEPARATORS) + text + rng.choice(SEPARATORS)
        out.append(text)
    return out


@pytest.fixture(scope="module")
def mobileclip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TokenizerSpec]:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return path, write_tokenizer("MobileCLIP2-S0", path)


def _mismatches(reference, tokenizer: Tokenizer, texts: list[str]) -> list[str]:
    want = reference(texts).numpy()
    got = tokenizer.encode(texts)
    assert got.dtype == np.int64 and got.shape == want.shape
    return [t for t, w, g in zip(texts, want, got, strict=True) if (w != g).any()]


def test_mobileclip2_s0_parity_with_open_clip(mobileclip: tuple[Path, TokenizerSpec]) -> None:
    path, spec = mobileclip
    assert spec == TokenizerSpec(kind="clip-bpe", context_length=77, sot_id=49406, eot_id=49407)
    tokenizer = Tokenizer.from_file(path, spec)
    reference = open_clip.get_tokenizer("MobileCLIP2-S0")
    texts = corpus()
    start = time.perf_counter()
    bad = _mismatches(reference, tokenizer, texts)
    seconds = time.perf_counter() - start
    truncated = int((tokenizer.encode(texts)[:, -1] == spec.eot_id).sum())
    print(
        f"\nMobileCLIP2-S0 tokenizer parity: {len(texts)} strings ({truncated} truncated), "
        f"{len(bad)} mismatches ({seconds:.2f} s for both tokenizers)"
    )
    assert bad == []
    assert tokenizer.vocab_size == reference.vocab_size == 49408
    assert tokenizer.encode("a cat").shape == (1, 77)
    assert (tokenizer("a cat") == tokenizer.encode(["a cat"])).all()
    assert tokenizer.encode([]).shape == (0, 77)


@pytest.mark.parametrize("clean", ["whitespace", "canonicalize"])
def test_other_clean_modes_match_simple_tokenizer(mobileclip: tuple[Path, TokenizerSpec], clean: str) -> None:
    path = mobileclip[0]
    tokenizer = Tokenizer.from_file(
        path, TokenizerSpec(kind="clip-bpe", context_length=77, clean=clean, sot_id=49406, eot_id=49407)
    )
    texts = corpus(400, seed=1)
    bad = _mismatches(SimpleTokenizer(clean=clean), tokenizer, texts)
    print(f"\nclean={clean}: {len(texts)} strings, {len(bad)} mismatches")
    assert bad == []


def test_non_default_context_length(tmp_path: Path) -> None:
    """PE-Core-B-16 uses SimpleTokenizer with context_length 32."""
    spec = write_tokenizer("PE-Core-B-16", tmp_path / "tokenizer.json")
    assert spec.context_length == 32
    tokenizer = Tokenizer.from_file(tmp_path / "tokenizer.json", spec)
    texts = corpus(300, seed=2)
    bad = _mismatches(open_clip.get_tokenizer("PE-Core-B-16"), tokenizer, texts)
    assert bad == []
    ids = tokenizer.encode("word " * 50)[0]
    assert ids.shape == (32,) and ids[0] == spec.sot_id and ids[-1] == spec.eot_id


def test_spec_round_trip_and_bad_fields() -> None:
    spec = TokenizerSpec(kind="clip-bpe", context_length=32, clean="whitespace", sot_id=1, eot_id=2, pad_id=3)
    data = spec.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert TokenizerSpec.from_dict(data) == spec
    assert TokenizerSpec.from_dict({**data, "added_later": 1}) == spec
    minimal = {"kind": "clip-bpe", "context_length": 77, "sot_id": 49406, "eot_id": 49407}
    assert TokenizerSpec.from_dict(minimal) == TokenizerSpec(**minimal)
    bad = [
        ({**data, "kind": "sentencepiece"}, "kind"),
        ({**data, "context_length": "77"}, "context_length"),
        ({**data, "context_length": 0}, "context_length"),
        ({**data, "clean": "upper"}, "clean"),
        ({**data, "sot_id": True}, "sot_id"),
        ({**data, "pad_id": -1}, "pad_id"),
        ({**data, "file": ""}, "file"),
        ({k: v for k, v in data.items() if k != "eot_id"}, "eot_id"),
    ]
    for d, name in bad:
        with pytest.raises(BundleError, match=name) as info:
            TokenizerSpec.from_dict(d)
        assert "\n" not in str(info.value)
    with pytest.raises(BundleError):
        TokenizerSpec.from_dict(["not", "a", "dict"])  # type: ignore[arg-type]


def test_missing_and_corrupt_tokenizer_file(tmp_path: Path, mobileclip: tuple[Path, TokenizerSpec]) -> None:
    spec = mobileclip[1]
    missing = tmp_path / "nope.json"
    with pytest.raises(TokenizerError, match=r"nope\.json"):
        Tokenizer.from_file(missing, spec)
    for name, content in [("garbage.json", "{not json"), ("empty.json", ""), ("object.json", "{}")]:
        (tmp_path / name).write_text(content)
        with pytest.raises(TokenizerError, match=re.escape(name)) as info:
            Tokenizer.from_file(tmp_path / name, spec)
        assert "\n" not in str(info.value)
    too_big = TokenizerSpec(kind="clip-bpe", context_length=77, sot_id=49406, eot_id=60000)
    with pytest.raises(TokenizerError, match="eot_id"):
        Tokenizer.from_file(mobileclip[0], too_big)


def test_export_refuses_what_it_cannot_reproduce(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "tokenizer.json"
    with pytest.raises(ModelError, match="no-such-model"):
        write_tokenizer("no-such-model", out)
    with pytest.raises(ExportError, match="Hugging Face tokenizer"):
        write_tokenizer("xlm-roberta-base-ViT-B-32", out)
    with pytest.raises(ExportError, match="SigLIP"):
        write_tokenizer("ViT-B-16-SigLIP", out)
    config = open_clip.get_model_config("MobileCLIP2-S0")
    for option in ({"reduction_mask": "simple"}, {"made_up_option": 1}, {"additional_special_tokens": ["<x>"]}):
        patched = {**config, "text_cfg": {**config["text_cfg"], "tokenizer_kwargs": option}}
        monkeypatch.setattr(open_clip, "get_model_config", lambda name, patched=patched: patched)
        with pytest.raises(ExportError, match=next(iter(option))):
            write_tokenizer("MobileCLIP2-S0", out)
    assert not out.exists()


def test_runtime_tokenizer_imports_without_torch(mobileclip: tuple[Path, TokenizerSpec]) -> None:
    path, spec = mobileclip
    texts = ["a photo of a cat", "<start_of_text>Ünïcödé &amp; 😀", ""]
    expected = open_clip.get_tokenizer("MobileCLIP2-S0")(texts).numpy().tolist()
    script = f"""
import json, sys
sys.modules["torch"] = None
sys.modules["open_clip"] = None
sys.modules["timm"] = None
from pathlib import Path
from edgeclip.runtimes.tokenizer import Tokenizer, TokenizerSpec
spec = TokenizerSpec.from_dict(json.loads({json.dumps(json.dumps(spec.to_dict()))}))
tokenizer = Tokenizer.from_file(Path({str(path)!r}), spec)
ids = tokenizer.encode(json.loads({json.dumps(json.dumps(texts))}))
assert not any(m in sys.modules and sys.modules[m] is not None for m in ("torch", "open_clip", "timm"))
print(json.dumps(ids.tolist()))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected
