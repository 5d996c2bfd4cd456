"""Export side of the tokenizer: write open_clip's text tokenizer as a tokenizer.json a device can load."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import open_clip
import regex
from open_clip import tokenizer as oc_tokenizer
from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from edgeclip.errors import ExportError, ModelError
from edgeclip.runtimes.tokenizer import Tokenizer, TokenizerSpec

# open_clip's SimpleTokenizer regex after its special-token alternatives; checked against the live one.
_WORD_PATTERNS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_CLASS_PATTERNS = (r"[\p{L}]", r"[\p{N}]", r"[^\s\p{L}\p{N}]")
_BODY = "|".join(_WORD_PATTERNS) + r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
_CLEAN_FNS = {
    "lower": oc_tokenizer._clean_lower,
    "whitespace": oc_tokenizer._clean_whitespace,
    "canonicalize": oc_tokenizer._clean_canonicalize,
}
_SUPPORTED_KWARGS = {"clean", "reduction_mask", "additional_special_tokens"}
# Strings the export checks itself on; the test suite runs a far larger corpus.
_SELF_CHECK = (
    "",
    "a photo of a cat.",
    "A Photo OF   a\tDog's toy, it's 2024!",
    "&lt;b&gt;bold&lt;/b&gt; &amp; caf\u00e9 &#39;quoted&#39;",
    "\u00e2\u20ac\u0153mojibake\u00e2\u20ac\u009d",
    "\u4e2d\u6587 \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4 \u0440\u0443\u0441\u0441\u043a\u0438\u0439",
    "\U0001f600\U0001f431 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "<start_of_text>x<end_of_text> !<end_of_text> <START_OF_TEXT>",
    "'\u017f '\u017fun \u0345 word" * 3,
    "very long " * 60,
)


def write_tokenizer(model_name: str, out_path: Path) -> TokenizerSpec:
    """Write the tokenizer.json for open_clip model `model_name` and return its spec; checks parity first."""
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise ModelError(f"model {model_name!r} is not an open_clip architecture: cannot build its tokenizer")
    text_cfg = config.get("text_cfg", {})
    hf_name = text_cfg.get("hf_tokenizer_name")
    if hf_name:
        raise ExportError(
            f"model {model_name} uses the Hugging Face tokenizer {hf_name!r}: "
            "not supported yet (only open_clip's CLIP BPE tokenizer is)"
        )
    if "siglip" in model_name.lower():
        raise ExportError(f"model {model_name} uses open_clip's SigLIP sentencepiece tokenizer: not supported yet")
    kwargs = text_cfg.get("tokenizer_kwargs") or {}
    for key, value in kwargs.items():
        if key not in _SUPPORTED_KWARGS:
            raise ExportError(f"model {model_name} sets tokenizer option {key}={value!r}: not supported")
    if kwargs.get("reduction_mask"):
        raise ExportError(
            f"model {model_name} sets tokenizer option reduction_mask={kwargs['reduction_mask']!r}: "
            "not supported (its random token selection cannot be reproduced)"
        )
    if kwargs.get("additional_special_tokens"):
        raise ExportError(f"model {model_name} sets tokenizer option additional_special_tokens: not supported")

    reference = open_clip.get_tokenizer(model_name)
    if not isinstance(reference, oc_tokenizer.SimpleTokenizer):
        raise ExportError(f"model {model_name} uses {type(reference).__name__}: not supported yet")
    clean = next((name for name, fn in _CLEAN_FNS.items() if reference.clean_fn is fn), None)
    if clean is None:
        raise ExportError(f"model {model_name} uses the text clean function {reference.clean_fn!r}: not supported")

    backend = build_clip_bpe(reference)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    backend.save(str(out_path))
    spec = TokenizerSpec(
        kind="clip-bpe",
        file=out_path.name,
        context_length=int(reference.context_length),
        clean=clean,
        sot_id=int(reference.sot_token_id),
        eot_id=int(reference.eot_token_id),
        pad_id=0,
    )
    try:
        _self_check(model_name, reference, Tokenizer.from_file(out_path, spec), _SELF_CHECK)
    except Exception:
        out_path.unlink(missing_ok=True)
        raise
    return spec


def build_clip_bpe(reference: oc_tokenizer.SimpleTokenizer) -> HFTokenizer:
    """A `tokenizers` BPE with SimpleTokenizer's vocab, merges and split regex; cleaning stays in Python."""
    specials = [reference.decoder[i] for i in reference.all_special_ids]
    expected = "|".join(specials) + "|" + _BODY
    if reference.pat.pattern != expected:
        raise ExportError(
            f"open_clip's tokenizer regex is {reference.pat.pattern!r}: "
            "edgeclip only reproduces the CLIP one, update edgeclip"
        )
    merges = [pair for pair, _ in sorted(reference.bpe_ranks.items(), key=lambda kv: kv[1])]
    model = models.BPE(
        vocab=dict(reference.encoder),
        merges=merges,
        end_of_word_suffix="</w>",
        continuing_subword_prefix="",
    )
    backend = HFTokenizer(model)
    split = pre_tokenizers.Split(
        Regex(onig_split_pattern(specials, reference.pat.flags)), behavior="removed", invert=True
    )
    # tokenizers' own .pyi is wrong here: it declares these properties without their setters, and ByteLevel
    # without its trim_offsets argument (both exist at run time).
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)  # type: ignore[call-arg]
    backend.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])  # type: ignore[misc]
    backend.decoder = decoders.ByteLevel()  # type: ignore[misc]
    return backend


def onig_split_pattern(specials: Iterable[str], flags: int) -> str:
    """open_clip's split regex with every class and case-insensitive letter spelled as code point ranges.

    `tokenizers` matches with Oniguruma, whose Unicode tables and case folding differ from the `regex`
    module open_clip uses (newer scripts, U+0345, 'ſ'); explicit ranges taken from `regex` itself make
    the split identical on the device, whatever its Oniguruma version.
    """
    all_chars = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)

    def char_class(pattern: str) -> str:
        points = [m.start() for m in regex.finditer(pattern, all_chars, flags=flags)]
        # all_chars skips the 2048 surrogates, so positions past them are shifted back into place.
        points = [p if p < 0xD800 else p + 0x800 for p in points]
        return "[" + "".join(_range(a, b) for a, b in _ranges(points)) + "]"

    def literal(word: str) -> str:
        return "".join(char_class(regex.escape(ch)) for ch in word)

    letters, numbers, others = (char_class(p) for p in _CLASS_PATTERNS)
    parts = [literal(w) for w in (*specials, *_WORD_PATTERNS)]
    return "|".join([*parts, letters + "+", numbers, others + "+"])


def _ranges(points: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for p in points:
        if out and out[-1][1] == p - 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def _range(a: int, b: int) -> str:
    return f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}"


def _self_check(
    model_name: str, reference: oc_tokenizer.SimpleTokenizer, tokenizer: Tokenizer, texts: Iterable[str]
) -> None:
    texts = list(texts)
    want = reference(texts).numpy()
    got = tokenizer.encode(texts)
    bad = [t for t, w, g in zip(texts, want, got, strict=True) if (w != g).any()]
    if bad:
        raise ExportError(
            f"tokenizer for {model_name} differs from open_clip's on {len(bad)} of {len(texts)} "
            f"check strings (first: {bad[0][:40]!r})"
        )
