"""Synthetic-world backends of the components (DESIGN section 6): offline, fast, deterministic.

- :class:`SyntheticCaptioner`: captions from pixels with :class:`~bench.components.recognise.
  WorldRecogniser` (it sees only the image it is given, never a scene or a label map).
- :class:`KeywordSummariser`: a deterministic stand-in for a chat LLM that understands the two
  requests Describe-and-Dissect makes. It reads the last user turn, splits the instruction from
  the payload at ``"following description(s): "`` (else at the last colon), and

  - *simplify* (the instruction mentions simplifying): keeps the first object the description
    names (colour, pattern, shape) and its background: "red striped circle on grass";
  - *summarise* (anything else): splits the payload on commas into descriptions, reads the
    world's concepts in each (``bench.synth.text.parse_phrase``), and keeps, per category, the
    value that at least ``agree`` of the first ``ceil(share * n)`` descriptions name, or two
    values (one category at most) that together cover ``pair`` of them: "red circles",
    "green or blue objects", "striped objects on sand", "grass". Reading only the first part of
    the list in the order given mimics an LLM's sampling: reshuffled lists give the varied
    candidates the method's five summaries rely on.

- :class:`SyntheticTextToImage`: ``bench.synth.text.render_phrase`` (the world's phrase renderer),
  one seed per (run seed, prompt, image).
- :class:`SyntheticImageEncoder`: pooled features (spatial mean and max, L2-normalised) of a
  synthetic target's last convolutional layer, the offline stand-in for CLIP's image encoder.
- :class:`SyntheticImageTextEncoder`: the offline stand-in for CLIP's joint space. An image is
  what the recogniser sees in its pixels, a text what the phrase parser reads in it, both as a
  vector over the world's concept words (colours, shapes, patterns, materials, scenes) plus a
  constant "anything" dimension, L2-normalised: an image and a text are close when the text
  names what the image shows.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bench.components.base import (
    ImageInput,
    Prompt,
    as_messages,
    prompt_seed,
    to_array,
)
from bench.environment import resolve_device

if TYPE_CHECKING:
    import numpy as np
    import torch

#: Bump when the synthetic captioner's output for a given image changes.
RECOGNISER_VERSION = 1
#: Bump when the synthetic joint embeddings change.
JOINT_VERSION = 1
#: Bump when the keyword summariser's answers change.
SUMMARISER_VERSION = 1

_MATERIAL_PHRASE = {
    "grass": "on grass",
    "sky": "in the sky",
    "water": "on water",
    "sand": "on sand",
    "brick": "on a brick wall",
    "wood": "on wood",
    "snow": "on snow",
}
_PLURAL = {"cross": "crosses"}
_STOP = frozenset(
    "a an the of and or on in with to is are at by for from its their this that these those "
    "image images picture photo".split()
)


class SyntheticCaptioner:
    """Captions of synthetic-world images, read from their pixels (module docstring)."""

    cheap = True

    def __init__(self) -> None:
        from bench.components.recognise import WorldRecogniser

        self._rec = WorldRecogniser()

    def identity(self) -> dict[str, Any]:
        from bench.synth.world import GENERATOR_VERSION

        return {
            "name": "synthetic-captioner",
            "revision": f"world{GENERATOR_VERSION}.recogniser{RECOGNISER_VERSION}",
        }

    def caption(self, images: Sequence[ImageInput]) -> list[str]:
        return [self._rec.caption(to_array(im)) for im in images]


# --- the keyword summariser ---------------------------------------------------------------------


def concepts_in(text: str) -> dict[str, tuple[str, ...]]:
    """The world's concepts a text names, per category, in order of mention (negated ones left
    out): ``"a red striped circle on grass"`` -> ``{"color": ("red",), "pattern": ("striped",),
    "object": ("circle",), "material": ("grass",)}``."""
    from bench.synth.text import parse_phrase

    specs, _ = parse_phrase(text)
    out: dict[str, list[str]] = {}
    for spec in specs:
        for cat, vals in spec.required.items():
            for v in vals:
                if v not in out.setdefault(cat, []):
                    out[cat].append(v)
    return {k: tuple(v) for k, v in out.items()}


def _plural(shape: str) -> str:
    return _PLURAL.get(shape, shape + "s")


def compose(
    colours: Sequence[str] = (),
    patterns: Sequence[str] = (),
    shapes: Sequence[str] = (),
    materials: Sequence[str] = (),
    *,
    plural: bool = True,
) -> str:
    """A short concept phrase: ``compose(["red"], [], ["circle"], ["grass"])`` ->
    ``"red circles on grass"``; alternatives are joined with "or"."""
    words = []
    if colours:
        words.append(" or ".join(colours))
    if patterns:
        words.append(" or ".join(patterns))
    if shapes:
        words.append(" or ".join(_plural(s) if plural else s for s in shapes))
    elif words:
        words.append("objects" if plural else "object")
    if materials:
        if words:
            words.append(" or ".join(_MATERIAL_PHRASE[m] for m in materials))
        else:
            words.append(" or ".join(materials))
    return " ".join(words)


class KeywordSummariser:
    """A deterministic keyword-consensus "language model" (module docstring).

    ``share``: fraction of the descriptions (first in the order given) a summary reads;
    ``agree``: fraction of those that must name a value for it to be kept; ``pair``: fraction
    two values of one category must cover together to be kept as "x or y".
    """

    cheap = True

    def __init__(self, *, share: float = 0.8, agree: float = 0.6, pair: float = 0.8):
        self.share, self.agree, self.pair = float(share), float(agree), float(pair)

    def identity(self) -> dict[str, Any]:
        return {
            "name": "keyword-summariser",
            "revision": str(SUMMARISER_VERSION),
            "share": self.share,
            "agree": self.agree,
            "pair": self.pair,
        }

    def complete(self, prompts: Sequence[Prompt]) -> list[str]:
        return [self._answer(as_messages(p)) for p in prompts]

    def _answer(self, messages: list[dict[str, str]]) -> str:
        user = [m["content"] for m in messages if m["role"] == "user"]
        text = user[-1] if user else messages[-1]["content"]
        m = re.search(r"following descriptions?\s*:\s*", text, flags=re.IGNORECASE)
        if m:
            instruction, payload = text[: m.start()], text[m.end() :]
        elif ":" in text:
            instruction, _, payload = text.rpartition(":")
        else:
            instruction, payload = "", text
        if "simplif" in instruction.lower():
            return self.simplify(payload)
        return self.summarise([d for d in (s.strip() for s in payload.split(",")) if d])

    def simplify(self, description: str) -> str:
        """The first object a description names, with its background."""
        first = re.split(r",| and ", description, maxsplit=1)[0]
        obj = concepts_in(first)
        whole = concepts_in(description)
        phrase = compose(
            obj.get("color", ())[:1],
            tuple(p for p in obj.get("pattern", ())[:1] if p != "plain"),
            obj.get("object", ())[:1],
            whole.get("material", ())[:1],
            plural=False,
        )
        return phrase or _fallback([description])

    def summarise(self, descriptions: Sequence[str]) -> str:
        if not descriptions:
            return "objects"
        n = max(1, math.ceil(self.share * len(descriptions)))
        read = list(descriptions[:n])
        found = [concepts_in(d) for d in read]
        picked: dict[str, tuple[str, ...]] = {}
        paired = False
        for cat in ("color", "pattern", "object", "material"):
            counts = Counter(v for f in found for v in set(f.get(cat, ())))
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], _first_seen(read, kv[0])))
            if not ranked:
                continue
            if ranked[0][1] >= self.agree * n:
                picked[cat] = (ranked[0][0],)
            elif (
                not paired
                and cat != "pattern"
                and len(ranked) > 1
                and ranked[1][1] >= 0.25 * n
                and _either(found, cat, ranked[0][0], ranked[1][0]) >= self.pair * n
            ):
                picked[cat] = (ranked[0][0], ranked[1][0])
                paired = True
        patterns = tuple(p for p in picked.get("pattern", ()) if p != "plain")
        phrase = compose(
            picked.get("color", ()),
            patterns,
            picked.get("object", ()),
            picked.get("material", ()),
        )
        return phrase or _fallback(read)


def _first_seen(texts: Sequence[str], word: str) -> int:
    for i, t in enumerate(texts):
        if word in t.lower():
            return i
    return len(texts)


def _either(found: Sequence[dict[str, tuple[str, ...]]], cat: str, a: str, b: str) -> int:
    return sum(1 for f in found if a in f.get(cat, ()) or b in f.get(cat, ()))


def _fallback(texts: Sequence[str]) -> str:
    """The most common content word (first seen on ties), or "objects"."""
    words = [w for t in texts for w in re.findall(r"[a-z][a-z\-]+", t.lower()) if w not in _STOP]
    if not words:
        return "objects"
    counts = Counter(words)
    return max(counts, key=lambda w: (counts[w], -words.index(w)))


# --- images -------------------------------------------------------------------------------------


class SyntheticTextToImage:
    """Images of a phrase drawn by the world's renderer (``bench.synth.text.render_phrase``).

    Not ``cheap``: drawing a prompt's images costs more than reading them from the cache, so
    candidates shared by many units are drawn once per cache.
    """

    cheap = False

    def __init__(self, *, size: int = 64):
        self.size = int(size)

    def identity(self) -> dict[str, Any]:
        from bench.synth.text import PHRASE_VERSION
        from bench.synth.world import GENERATOR_VERSION

        return {
            "name": "synthetic-renderer",
            "revision": f"world{GENERATOR_VERSION}-phrases{PHRASE_VERSION}",
            "size": self.size,
        }

    def generate(self, prompts: Sequence[str], n: int, seed: int) -> list[np.ndarray]:
        import numpy as np

        from bench.synth.text import render_phrase

        out = []
        for p in prompts:
            base = prompt_seed(seed, p)
            out.append(
                np.stack([render_phrase(p, (base + j) % (2**62), self.size) for j in range(n)])
            )
        return out


class SyntheticImageEncoder:
    """Pooled features of a synthetic target's last convolutional layer (module docstring)."""

    def __init__(self, *, target: str = "synth.convnet", device: str | None = "cpu",
                 batch_size: int = 256):  # fmt: skip
        self.target_name = target
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self._target: Any = None

    def _load(self) -> Any:
        if self._target is None:
            from bench.targets import load_target

            self._target = load_target(self.target_name, device=self.device, download=False)
        return self._target

    def identity(self) -> dict[str, Any]:
        t = self._load()
        return {
            "name": f"synthetic-encoder:{self.target_name}",
            "revision": t.weights_sha256[:16],
        }

    def encode(self, images: Sequence[ImageInput]) -> torch.Tensor:
        import torch

        from bench.record import hooks

        target = self._load()
        layer = target.spec.layers[-2] if len(target.spec.layers) > 1 else target.spec.layers[0]
        pre = target.preprocessing
        feats = []
        with torch.inference_mode(), hooks(target.model, [layer]) as store:
            for start in range(0, len(images), self.batch_size):
                batch = [to_array(im) for im in images[start : start + self.batch_size]]
                x = torch.stack([_transform(a, pre) for a in batch]).to(self.device)
                target.model(x)
                fmap = target.spatialize(layer, store[layer]).float()
                feats.append(torch.cat([fmap.mean((2, 3)), fmap.amax((2, 3))], 1).cpu())
        if not feats:
            return torch.zeros((0, 0), dtype=torch.float32)
        out = torch.cat(feats)
        return torch.nn.functional.normalize(out, dim=1)


class SyntheticImageTextEncoder:
    """A joint image-text space for the synthetic world (module docstring).

    Dimensions: one per concept word of the world (``bench.synth.concepts``) and one constant
    ``anything`` dimension of weight ``base`` (so that an image or a text naming nothing still
    has a direction). An image sets to 1 the colour, shape and pattern of every object the
    recogniser finds, its background material and that material's scene; a text sets to 1 every
    concept it names (negated ones left out). Rows are L2-normalised, ``float32 [N, D]``.
    """

    cheap = False  # the recogniser takes ~20 ms an image: embeddings are worth caching

    def __init__(self, *, base: float = 0.5):
        from bench.components.recognise import WorldRecogniser
        from bench.synth import concepts as C

        self.base = float(base)
        self._rec = WorldRecogniser()
        words = (*C.COLORS, *C.SHAPES, *C.PATTERNS, *C.MATERIALS, *C.SCENES)
        self._index = {w: i for i, w in enumerate(words)}
        self._scene_of = dict(C.SCENE_OF_MATERIAL)
        self.dim = len(words) + 1

    def identity(self) -> dict[str, Any]:
        from bench.synth.world import GENERATOR_VERSION

        return {
            "name": "synthetic-image-text",
            "revision": f"world{GENERATOR_VERSION}.recogniser{RECOGNISER_VERSION}"
            f".joint{JOINT_VERSION}",
            "base": self.base,
        }

    def _vector(self, words: Sequence[str]) -> list[float]:
        v = [0.0] * self.dim
        v[-1] = self.base
        for w in words:
            if w in self._index:
                v[self._index[w]] = 1.0
        return v

    def _rows(self, rows: list[list[float]]) -> torch.Tensor:
        import torch

        if not rows:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        out = torch.tensor(rows, dtype=torch.float32)
        return torch.nn.functional.normalize(out, dim=1)

    def encode_images(self, images: Sequence[ImageInput]) -> torch.Tensor:
        rows = []
        for im in images:
            seen = self._rec.parse(to_array(im))
            words = [w for o in seen.objects for w in (o.color, o.shape, o.pattern)]
            if seen.material is not None:
                words += [seen.material, self._scene_of[seen.material]]
            rows.append(self._vector(words))
        return self._rows(rows)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self._rows(
            [self._vector([v for vals in concepts_in(t).values() for v in vals]) for t in texts]
        )


def _transform(arr: np.ndarray, pre: Any) -> torch.Tensor:
    from PIL import Image

    return pre.transform(Image.fromarray(arr), fixed_geometry=True)


# --- reading labels back ------------------------------------------------------------------------


def names_formula(text: str, formula: Sequence[Any], *, require: str = "all") -> bool:
    """Whether ``text`` names the concept of a formula tree (``bench.synth.concepts``).

    A leaf is named when the text mentions it (synonyms and plurals count); a negated leaf must
    not be mentioned. ``require="all"``: every positive leaf, ORs included ("green OR blue" needs
    both colours); ``"any"``: one branch of each OR suffices ("green objects" names it).
    """
    if require not in ("all", "any"):
        raise ValueError(f"Expected require 'all' or 'any', got {require!r}")
    named = {v for vals in concepts_in(text).values() for v in vals}

    def holds(tree: Sequence[Any]) -> bool:
        op = tree[0]
        if op == "leaf":
            return tree[1] in named
        if op == "not":
            inner = tree[1]
            return inner[1] not in named if inner[0] == "leaf" else True
        if op == "or" and require == "any":
            return any(holds(t) for t in tree[1:])
        return all(holds(t) for t in tree[1:])

    return holds(formula)
