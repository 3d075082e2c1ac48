"""Caption tokenizer and vocabulary, compatible with MILAN's spaCy-based indexer.

MILAN (``src/utils/lang.py``) splits captions with spaCy's English tokenizer (``en_core_web_sm``,
no lemmas, stop words and punctuation kept) and lower-cases every token. spaCy is a heavy
dependency pinned to old versions there, so :func:`tokenize` re-implements the part of spaCy's
rule-based tokenizer that captions exercise, from its documented algorithm and English rules:

1. split on whitespace (whitespace tokens are dropped);
2. a chunk that is a special case (contractions such as ``don't -> do n't``, abbreviations such as
   ``e.g.``, single letters with a period such as ``a.``) is replaced by its pieces;
3. otherwise prefixes (opening punctuation and quotes, currency signs) and suffixes (closing
   punctuation and quotes, ``'s``, a period after a lower-case letter, a digit or punctuation)
   are stripped repeatedly, stopping as soon as the remainder is a special case;
4. what remains is kept whole when it looks like a URL (``sky.com``); otherwise it is split at
   infixes: hyphens between letters (``black-and-white -> black - and - white``), commas between
   letters, ``.`` between a lower- and an upper-case letter, ``/ : < > =`` before a letter,
   arithmetic signs between digits, and ellipses;
5. tokens are lower-cased afterwards (spaCy tokenizes the original text; MILAN lowers the tokens).

Not reproduced (irrelevant for captions): emoticons and pictographs, non-Latin scripts' letter
classes (letters are Latin-1 plus Latin Extended-A here), and spaCy's lexical attributes.

:class:`Vocab` is MILAN's indexer: tokens most frequent first, then ``<start>``, ``<stop>``,
``<pad>``, ``<unk>`` with ids ``len(tokens) + 0..3``; ``encode`` and ``reconstruct`` mirror
``Indexer.__call__`` and ``Indexer.reconstruct``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import DataError

if TYPE_CHECKING:
    import torch

START, STOP, PAD, UNK = "<start>", "<stop>", "<pad>", "<unk>"
#: Special tokens in id order after the vocabulary's words.
SPECIALS = (START, STOP, PAD, UNK)

# --- character classes (spaCy's char_classes, Latin subset) ----------------------------------

_LOWER = "a-z\u00df-\u00f6\u00f8-\u00ff\u0101\u0103\u0105\u0107\u0109\u010b\u010d\u010f\u0111"
_LOWER += "\u0113\u0115\u0117\u0119\u011b\u011d\u011f\u0121\u0123\u0125\u0127\u0129\u012b\u012d"
_LOWER += "\u012f\u0131\u0133\u0135\u0137\u0138\u013a\u013c\u013e\u0140\u0142\u0144\u0146\u0148"
_LOWER += "\u0149\u014b\u014d\u014f\u0151\u0153\u0155\u0157\u0159\u015b\u015d\u015f\u0161\u0163"
_LOWER += "\u0165\u0167\u0169\u016b\u016d\u016f\u0171\u0173\u0175\u0177\u017a\u017c\u017e\u017f"
_UPPER = "A-Z\u00c0-\u00d6\u00d8-\u00de\u0100\u0102\u0104\u0106\u0108\u010a\u010c\u010e\u0110"
_UPPER += "\u0112\u0114\u0116\u0118\u011a\u011c\u011e\u0120\u0122\u0124\u0126\u0128\u012a\u012c"
_UPPER += "\u012e\u0130\u0132\u0134\u0136\u0139\u013b\u013d\u013f\u0141\u0143\u0145\u0147\u014a"
_UPPER += "\u014c\u014e\u0150\u0152\u0154\u0156\u0158\u015a\u015c\u015e\u0160\u0162\u0164\u0166"
_UPPER += "\u0168\u016a\u016c\u016e\u0170\u0172\u0174\u0176\u0178\u0179\u017b\u017d"
_ALPHA = _LOWER + _UPPER

_PUNCT = "… …… , : ; ! ? ¿ ؟ ¡ ( ) [ ] { } < > _ # * & 。 ？ ！ ， 、 ； ： ～ · । ، ۔ ؛ ٪".split()
_QUOTES = "' \" ” “ ` ‘ ´ ’ ‚ , „ » « 「 」 『 』 （ ） 〔 〕 【 】 《 》 〈 〉 ⟦ ⟧".split()
_CURRENCY = (
    "$ £ € ¥ ฿ US$ C$ A$ ₽ ﷼ ₴ ₠ ₡ ₢ ₣ ₤ ₥ ₦ ₧ ₨ ₩ ₪ ₫ ₭ ₮ ₯ ₰ ₱ ₲ ₳ ₵ ₶ ₷ ₸ ₹ ₺ ₻ ₼ ₾ ₿"
).split()
_UNITS = (
    "km km² km³ m m² m³ dm dm² dm³ cm cm² cm³ mm mm² mm³ ha µm nm yd in ft kg g mg µg t lb oz "
    "m/s km/h kmh mph hPa Pa mbar mb MB kb KB gb GB tb TB T G M K %"
).split()
_HYPHENS = "- – — -- --- —— ~".split()
_ELLIPSES = [r"\.\.+", "…"]


def _alts(items: Iterable[str]) -> list[str]:
    return [re.escape(s) for s in items]


def _chars(items: Iterable[str]) -> str:
    return "".join(re.escape(c) for c in "".join(items))


_LIST_PUNCT = _alts(_PUNCT)
_LIST_QUOTES = _alts(_QUOTES)
_QUOTE_CHARS = _chars(_QUOTES)
_PUNCT_CHARS = _chars(_PUNCT)
_HYPHEN_ALTS = "|".join(_alts(_HYPHENS))

_PREFIXES = (
    ["§", "%", "=", "—", "–", r"\+(?![0-9])"]
    + _LIST_PUNCT
    + _ELLIPSES
    + _LIST_QUOTES
    + _alts(_CURRENCY)
)
_SUFFIXES = (
    _LIST_PUNCT
    + _ELLIPSES
    + _LIST_QUOTES
    + ["'s", "'S", "’s", "’S", "—", "–"]
    + [
        r"(?<=[0-9])\+",
        r"(?<=°[FfCcKk])\.",
        r"(?<=[0-9])(?:{})".format("|".join(_alts(_CURRENCY))),
        r"(?<=[0-9])(?:{})".format("|".join(_alts(_UNITS))),
        rf"(?<=[0-9{_LOWER}%²\-\+{_PUNCT_CHARS}{_QUOTE_CHARS}])\.",
        rf"(?<=[{_UPPER}][{_UPPER}])\.",
    ]
)
_INFIXES = _ELLIPSES + [
    r"(?<=[0-9])[+\-\*^](?=[0-9-])",
    rf"(?<=[{_LOWER}{_QUOTE_CHARS}])\.(?=[{_UPPER}{_QUOTE_CHARS}])",
    rf"(?<=[{_ALPHA}]),(?=[{_ALPHA}])",
    rf"(?<=[{_ALPHA}0-9])(?:{_HYPHEN_ALTS})(?=[{_ALPHA}])",
    rf"(?<=[{_ALPHA}0-9])[:<>=/](?=[{_ALPHA}])",
]

# spaCy joins the pieces into one alternation: the first alternative that matches wins, at the
# leftmost position (prefix: position 0; suffix: the leftmost start that reaches the end).
_PREFIX_RE = re.compile("|".join("^" + p for p in _PREFIXES))
_SUFFIX_RE = re.compile("|".join(p + "$" for p in _SUFFIXES))
_INFIX_RE = re.compile("|".join(_INFIXES))
# The host-name branch of spaCy's URL_MATCH: "name.tld" with an all-lower-case TLD of 2+ letters.
_URL_RE = re.compile(
    r"^(?=[\w])(?:[\w+\-.]{2,}://)?(?:\S+(?::\S*)?@)?"
    r"(?:(?:[A-Za-z0-9\u00a1-\uffff][A-Za-z0-9\u00a1-\uffff_-]{0,62})?[A-Za-z0-9\u00a1-\uffff]\.)+"
    rf"(?:[{_LOWER}]{{2,63}})(?::\d{{2,5}})?(?:[/?#]\S*)?(?<=[\w/])$"
)


@lru_cache(maxsize=1)
def _special_cases() -> dict[str, tuple[str, ...]]:
    """spaCy's English tokenizer exceptions that matter for captions (orth -> pieces)."""
    exc: dict[str, tuple[str, ...]] = {}

    def both_cases(word: str, *rest: str) -> None:
        for w in (word, word.title()):
            exc[w + "".join(rest)] = (w, *rest)

    for letter in "abcdefghijklmnopqrstuvwxyzäöü":
        exc[letter + "."] = (letter + ".",)
    for orth in ("'", "''", "C++"):
        exc[orth] = (orth,)
    for w in ("i",):
        both_cases(w, "'m")
        both_cases(w, "m")
        for orth in (w, w.title()):
            exc[orth + "'ma"] = (orth, "'m", "a")
            exc[orth + "ma"] = (orth, "m", "a")
    for w in ("i", "you", "he", "she", "it", "we", "they"):
        for aux in ("ll", "d"):
            both_cases(w, "'" + aux)
            both_cases(w, aux)
            for orth in (w, w.title()):
                exc[orth + "'" + aux + "'ve"] = (orth, "'" + aux, "'ve")
                exc[orth + aux + "ve"] = (orth, aux, "ve")
    for w in ("i", "you", "we", "they"):
        both_cases(w, "'ve")
        both_cases(w, "ve")
    for w in ("you", "we", "they"):
        both_cases(w, "'re")
        both_cases(w, "re")
    for w in ("he", "she", "it"):
        both_cases(w, "'s")
        both_cases(w, "s")
    for w in ("who", "what", "when", "where", "why", "how", "there", "that"):
        for aux in ("s", "ll", "re", "ve", "d"):
            both_cases(w, "'" + aux)
            both_cases(w, aux)
        for aux in ("ll", "d"):
            for orth in (w, w.title()):
                exc[orth + "'" + aux + "'ve"] = (orth, "'" + aux, "'ve")
                exc[orth + aux + "ve"] = (orth, aux, "ve")
    modal = "ca could do does did had may might must need ought sha should wo would".split()
    for w in modal:
        both_cases(w, "n't")
        both_cases(w, "nt")
        for orth in (w, w.title()):
            exc[orth + "n't've"] = (orth, "n't", "'ve")
            exc[orth + "ntve"] = (orth, "nt", "ve")
    for w in ("could", "might", "must", "should", "would"):
        both_cases(w, "'ve")
        both_cases(w, "ve")
    for w in ("ai", "are", "is", "was", "were", "have", "has", "dare"):
        both_cases(w, "n't")
        both_cases(w, "nt")
    for w in ("cause", "em", "ll", "nuff"):
        exc[w] = (w,)
        exc["'" + w] = ("'" + w,)
    for w in ("doin", "goin", "nothin", "nuthin", "ol", "somethin", "lovin", "havin"):
        for orth in (w, w.title()):
            exc[orth] = (orth,)
            exc[orth + "'"] = (orth + "'",)
    for hour in range(1, 13):
        for period in ("a.m.", "am", "p.m.", "pm"):
            exc[f"{hour}{period}"] = (str(hour), period)
    exc.update(
        {
            "y'all": ("y'", "all"),
            "yall": ("y", "all"),
            "cannot": ("can", "not"),
            "Cannot": ("Can", "not"),
            "gonna": ("gon", "na"),
            "Gonna": ("Gon", "na"),
            "gotta": ("got", "ta"),
            "Gotta": ("Got", "ta"),
            "let's": ("let", "'s"),
            "Let's": ("Let", "'s"),
        }
    )
    singles = "'S 's ‘S ‘s and/or w/o 're 'Cause 'cause 'cos 'Cos 'coz 'Coz 'cuz 'Cuz 'bout "
    singles += "ma'am Ma'am o'clock O'clock 'd a.m. Adm. Bros. co. Co. Corp. D.C. Dr. e.g. E.g. "
    singles += "E.G. Gen. Gov. i.e. I.e. I.E. Inc. Jr. Ltd. Md. Messrs. Mo. Mont. Mr. Mrs. Ms. "
    singles += "p.m. Ph.D. Prof. Rep. Rev. Sen. St. vs. v.s. Mt. Ak. Ala. Apr. Ariz. Ark. Aug. "
    singles += "Calif. Colo. Conn. Dec. Del. Feb. Fla. Ga. Ia. Id. Ill. Ind. Jan. Jul. Jun. Kan. "
    singles += "Kans. Ky. La. Mar. Mass. May. Mich. Minn. Miss. N.C. N.D. N.H. N.J. N.M. N.Y. "
    singles += "Neb. Nebr. Nev. Nov. Oct. Okla. Ore. Pa. S.C. Sep. Sept. Tenn. Va. Wash. Wis."
    for orth in singles.split():
        exc[orth] = (orth,)
    # Real words that the generated contraction rules would otherwise split.
    for word in ("Ill", "ill", "Its", "its", "Hell", "hell", "Shell", "shell", "Shed", "shed"):
        exc.pop(word, None)
    for word in ("were", "Were", "Well", "well", "Whore", "whore"):
        exc.pop(word, None)
    return exc


def _split_affixes(
    chunk: str, specials: dict[str, tuple[str, ...]]
) -> tuple[list[str], str, list[str]]:
    """spaCy's affix loop: ``(prefixes, remainder, suffixes in reverse order)``."""
    prefixes: list[str] = []
    suffixes: list[str] = []
    string = chunk
    last_size = -1
    while string and len(string) != last_size:
        if string in specials:
            break
        last_size = len(string)
        m = _PREFIX_RE.search(string)
        pre_len = m.end() if m else 0
        if pre_len:
            minus_pre = string[pre_len:]
            if minus_pre and minus_pre in specials:
                prefixes.append(string[:pre_len])
                string = minus_pre
                break
        m = _SUFFIX_RE.search(string[pre_len:])
        suf_len = (len(string) - pre_len - m.start()) if m else 0
        if suf_len:
            minus_suf = string[:-suf_len]
            if minus_suf and minus_suf in specials:
                suffixes.append(string[-suf_len:])
                string = minus_suf
                break
        if pre_len and suf_len and pre_len + suf_len <= len(string):
            prefixes.append(string[:pre_len])
            suffixes.append(string[-suf_len:])
            string = string[pre_len:-suf_len]
        elif pre_len:
            prefixes.append(string[:pre_len])
            string = string[pre_len:]
        elif suf_len:
            suffixes.append(string[-suf_len:])
            string = string[:-suf_len]
        if string in specials:
            break
    return prefixes, string, suffixes


def _split_infixes(string: str) -> list[str]:
    out: list[str] = []
    start = 0
    for m in _INFIX_RE.finditer(string):
        if m.start() == 0:  # an infix at the very start is not split off
            continue
        if m.start() != start:
            out.append(string[start : m.start()])
        if m.start() != m.end():
            out.append(string[m.start() : m.end()])
        start = m.end()
    if start < len(string):
        out.append(string[start:])
    return out


def _tokenize_chunk(chunk: str) -> list[str]:
    specials = _special_cases()
    if chunk in specials:
        return list(specials[chunk])
    prefixes, string, suffixes = _split_affixes(chunk, specials)
    tokens = list(prefixes)
    if string:
        if string in specials:
            tokens.extend(specials[string])
        elif _URL_RE.match(string):
            tokens.append(string)
        else:
            tokens.extend(_split_infixes(string))
    tokens.extend(reversed(suffixes))
    return tokens


def tokenize(text: str, *, lowercase: bool = True) -> list[str]:
    """Split a caption as spaCy's English tokenizer does, then lower-case the tokens.

    >>> tokenize("Black-and-white stripes, dogs' ears.")
    ['black', '-', 'and', '-', 'white', 'stripes', ',', 'dogs', "'", 'ears', '.']
    """
    tokens: list[str] = []
    for chunk in text.split():
        tokens.extend(_tokenize_chunk(chunk))
    return [t.lower() for t in tokens] if lowercase else tokens


# --- vocabulary ---------------------------------------------------------------------------------


def detokenize(tokens: Sequence[str]) -> str:
    """MILAN's ``Indexer.reconstruct`` text rules applied to tokens (no specials).

    In the original's order: tokens are joined with spaces; the space before each ``.``, ``,``,
    ``;`` and ``:`` is removed (one mark after the other); the spaces before and after ``-``
    are removed; then the text is split at every ``.``, each piece is stripped and
    ``str.capitalize``-d (first character upper-cased, the rest lower-cased), and the pieces
    are joined with ``". "`` and the whole stripped. So a period followed by a comma gives
    ``"Nature. , food"``, ``!`` and ``?`` do not start a sentence, and a ``.`` inside a token
    starts one (``"e.g."`` becomes ``"E. G."``), as in the original.
    """
    text = " ".join(tokens)
    for mark in ".,;:":
        text = text.replace(" " + mark, mark)
    text = text.replace(" -", "-").replace("- ", "-")
    return ". ".join(piece.strip().capitalize() for piece in text.split(".")).strip()


@dataclass(frozen=True, slots=True)
class Vocab:
    """Token ids: ``tokens`` in order (most frequent first), then the four specials.

    ``lowercase`` is the tokenizer flag the ids were built with (MILAN: True).
    """

    tokens: tuple[str, ...]
    lowercase: bool = True
    _ids: dict[str, int] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        tokens = tuple(self.tokens)
        object.__setattr__(self, "tokens", tokens)
        if len(set(tokens)) != len(tokens):
            dupes = sorted({t for t in tokens if tokens.count(t) > 1})
            raise DataError(f"Expected unique vocabulary tokens, got duplicates: {dupes[:10]}.")
        clash = [t for t in SPECIALS if t in tokens]
        if clash:
            raise DataError(
                f"Expected no special token among the vocabulary words, got {clash}; the "
                f"specials {list(SPECIALS)} are added after the words."
            )
        object.__setattr__(self, "_ids", {t: i for i, t in enumerate(tokens + SPECIALS)})

    # --- construction ---

    @classmethod
    def build(
        cls,
        captions: Iterable[str],
        *,
        min_count: int = 1,
        lowercase: bool = True,
    ) -> Vocab:
        """Words of ``captions`` with at least ``min_count`` occurrences, most frequent first.

        Ties are broken alphabetically, so the same multiset of captions gives the same ids
        whatever its order (MILAN's ``Counter.most_common`` breaks ties by first occurrence).
        """
        if min_count < 1:
            raise ValueError(f"Expected min_count >= 1, got {min_count}")
        counts: Counter[str] = Counter()
        for caption in captions:
            counts.update(tokenize(caption, lowercase=lowercase))
        for special in SPECIALS:
            counts.pop(special, None)
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls(tuple(t for t, n in ordered if n >= min_count), lowercase=lowercase)

    # --- ids ---

    def __len__(self) -> int:
        return len(self.tokens) + len(SPECIALS)

    @property
    def size(self) -> int:
        """Number of ids: words plus the four specials."""
        return len(self)

    @property
    def start(self) -> int:
        return len(self.tokens)

    @property
    def stop(self) -> int:
        return len(self.tokens) + 1

    @property
    def pad(self) -> int:
        return len(self.tokens) + 2

    @property
    def unk(self) -> int:
        return len(self.tokens) + 3

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(range(len(self.tokens), len(self)))

    def id(self, token: str) -> int:
        return self._ids.get(token, self.unk)

    def token(self, index: int) -> str:
        if not 0 <= index < len(self):
            raise IndexError(f"Expected a token id in [0, {len(self)}), got {index}")
        n = len(self.tokens)
        return self.tokens[index] if index < n else SPECIALS[index - n]

    def encode(
        self,
        text: str | Sequence[str],
        *,
        length: int | None = None,
        start: bool = True,
        stop: bool = True,
        pad: bool = True,
    ) -> list[int]:
        """Ids of a caption (a string, or tokens already split): ``[<start>] words [<stop>]``.

        With ``length``, the words are truncated so that ``words + <stop>`` fit in ``length``
        ids after ``<start>`` (the stop token is always kept, so a trained decoder always learns
        to end), and with ``pad`` the result is padded with ``<pad>`` to exactly
        ``length + start`` ids.
        """
        words = tokenize(text, lowercase=self.lowercase) if isinstance(text, str) else list(text)
        ids = [self.id(w) for w in words]
        if length is not None:
            if length < 1:
                raise ValueError(f"Expected length >= 1, got {length}")
            ids = ids[: length - 1] if stop else ids[:length]
        out = ([self.start] if start else []) + ids + ([self.stop] if stop else [])
        if length is not None and pad:
            out += [self.pad] * (length + int(start) - len(out))
        return out

    def encode_batch(self, texts: Sequence[str], *, length: int) -> torch.Tensor:
        """int64 [N, length + 1]: ``encode(text, length=length)`` for each text."""
        import torch

        return torch.tensor(
            [self.encode(t, length=length) for t in texts], dtype=torch.long
        ).reshape(len(texts), length + 1)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Word tokens of ``ids``: cut at the first ``<stop>``, other specials dropped."""
        out: list[str] = []
        n = len(self.tokens)
        for i in ids:
            i = int(i)
            if i == self.stop:
                break
            if i < n:
                out.append(self.tokens[i])
            elif i >= len(self):
                raise IndexError(f"Expected a token id in [0, {len(self)}), got {i}")
        return out

    def reconstruct(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (MILAN's ``Indexer.reconstruct``), see :func:`detokenize`."""
        return detokenize(self.decode(ids))

    # --- JSON ---

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": list(self.tokens),
            "lowercase": self.lowercase,
            "specials": list(SPECIALS),
        }

    @classmethod
    def from_json(cls, obj: Any) -> Vocab:
        if not isinstance(obj, dict) or not isinstance(obj.get("tokens"), list):
            raise DataError(
                f"Expected a vocabulary object with a 'tokens' list, got {type(obj).__name__}."
            )
        specials = obj.get("specials", list(SPECIALS))
        if list(specials) != list(SPECIALS):
            raise DataError(f"Expected the specials {list(SPECIALS)}, got {specials}.")
        if not all(isinstance(t, str) for t in obj["tokens"]):
            raise DataError("Expected every vocabulary token to be a string.")
        return cls(tuple(obj["tokens"]), lowercase=bool(obj.get("lowercase", True)))

    def save(self, path: str | os.PathLike[str]) -> None:
        from bench.schema import atomic_write

        atomic_write(path, json.dumps(self.to_json(), ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocab:
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"Could not read a vocabulary from {path}: {e}") from e
        return cls.from_json(obj)
