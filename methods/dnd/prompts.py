"""Step 2 of Describe-and-Dissect: the LLM prompts and the post-processing of their answers.

The prompt texts and few-shot examples are the original's (``DnD_models.py`` at commit
``d94fd2a8``: ``GPT_simplify``, ``GPT_model_single`` and its re-query), written as chats
(lists of ``{"role", "content"}`` turns) for any :class:`~bench.components.LanguageModel`.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.errors import MethodError

Chat = list[dict[str, str]]

# --- simplify one caption (GPT_simplify: one-shot) ----------------------------------------------

SIMPLIFY_EXAMPLE_PROMPT = (
    "State one coherent and concise concept label that is 1-5 words long that simplifies the "
    "following description: a red background with a red background and a red background with a "
    "red background."
)
SIMPLIFY_EXAMPLE_ANSWER = "A red background"
SIMPLIFY_INSTRUCTION = (
    "Only state your answer without a period and quotation marks. Do not number your answer. "
    "State one coherent and concise concept label that simplifies the following description and "
    "deletes any unnecessary details: "
)

# --- summarise many captions into one concept (GPT_model_single: two-shot) ----------------------

_SUMMARY_LEAD = (
    "State one coherent and concise concept label that is 1-5 words long that can semantically "
    "summarize and represent most, not necessarily all, of the conceptual similarities in the "
    "following descriptions: "
)
SUMMARY_EXAMPLES: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        (
            "a purple background with a very soft texture.",
            "a brown background with a diagonal pattern of lines and lines.",
            "a white windmill with a red door and a red door in the middle of the picture.",
            "a beige background with a rough texture of linen.",
            "a beige background with a rough texture and a very soft texture.",
        ),
        "multicolored textiles",
    ),
    (
        (
            "a little girl is sitting in a red tractor with the word sofy on the front.",
            "a toy car sits on a red ottoman in a play room.",
            "a red dress with silver studs and a silver belt.",
            "a red chevrolet camaro is on display at a car show.",
            "a red spool of a cable with the word red on it.",
        ),
        "red-themed scenes",
    ),
)
SUMMARY_INSTRUCTION = (
    "Only state your answer without a period and quotation marks and do not simply repeat the "
    "descriptions. State one coherent and concise concept label that is 1-5 words long and can "
    "semantically summarize and represent most, not necessarily all, of the conceptual "
    "similarities in the following descriptions: "
)
#: The single-turn prompt that re-summarises an answer that came back as a comma list.
REFEED_INSTRUCTION = (
    "Only state your answer without a period and do not simply repeat the descriptions. State "
    "one coherent and concise concept label that is 1-5 words long that can semantically "
    "summarize and represent most, not necessarily all, of the conceptual similarities in the "
    "following descriptions: "
)

#: Step 3's prompt to the text-to-image model.
IMAGE_PROMPT = "One realistic image of {}"
#: A candidate whose last word is one of these also gets "<candidate> background".
BACKGROUND_WORDS = frozenset({"design", "designs", "graphic", "graphics"})


def simplify_prompt(caption: str) -> Chat:
    return [
        {"role": "user", "content": SIMPLIFY_EXAMPLE_PROMPT},
        {"role": "assistant", "content": SIMPLIFY_EXAMPLE_ANSWER},
        {"role": "user", "content": SIMPLIFY_INSTRUCTION + caption},
    ]


def summary_prompt(descriptions: Sequence[str]) -> Chat:
    """The two-shot summary request over ``descriptions`` (joined with ", ")."""
    chat: Chat = []
    for examples, answer in SUMMARY_EXAMPLES:
        chat.append({"role": "user", "content": _SUMMARY_LEAD + ", ".join(examples)})
        chat.append({"role": "assistant", "content": answer})
    chat.append({"role": "user", "content": SUMMARY_INSTRUCTION + ", ".join(descriptions)})
    return chat


def refeed_prompt(items: Sequence[str]) -> Chat:
    return [{"role": "user", "content": REFEED_INSTRUCTION + ", ".join(items)}]


def after_colon(answer: str) -> str:
    """The original keeps what follows the first ``:`` ("Concept: red cars" -> " red cars",
    leading space included; it keeps only the text up to a second ``:``, we keep the rest)."""
    return answer.split(":", 1)[1] if ":" in answer else answer


def needs_refeed(answer: str) -> bool:
    """An answer that is a comma list is summarised again (one more single-turn request)."""
    return "," in answer


def refeed_items(answer: str) -> list[str]:
    """The comma list's items as the original sends them back: ``answer.split(",")`` unchanged,
    so each item after a comma keeps its leading space ("a, b" -> ``["a", " b"]``, joined
    again as "a,  b")."""
    return answer.split(",")


class EmptyAnswerError(MethodError):
    """A summary answer left no text to generate images of; the original crashes on it
    (``IndexError`` on ``word[-1]``), here it fails only its unit."""


def candidate(answer: str) -> str:
    """One summary answer post-processed as the original (``describe_neurons.py`` step 3):
    lower-cased and one trailing period dropped; quotation marks and inner spacing are kept.
    One deliberate difference: surrounding whitespace is stripped first (README deviations)."""
    word = answer.strip().lower()
    return word[:-1] if word.endswith(".") else word


def background_twin(answer: str) -> str | None:
    """The original's rule for vague design words: a (lower-cased, stripped) answer whose last
    word is design(s)/graphic(s) also gets "<answer> background". The last word is read before
    the trailing period is dropped, as the original reads it, so "floral design." gets none."""
    word = answer.strip().lower()
    if word and word.split()[-1] in BACKGROUND_WORDS:
        return word + " background"
    return None


def candidates(answers: Sequence[str]) -> list[str]:
    """The candidate concepts from the summaries, as the original post-processes them
    (:func:`candidate`, then the :func:`background_twin` of each answer after all answers),
    deduplicated here in a stable order (first occurrence; the original's ``set`` order
    depends on the hash seed). An empty answer raises :class:`EmptyAnswerError`."""
    out: list[str] = []
    twins: list[str] = []
    for i, a in enumerate(answers):
        c = candidate(a)
        if not c:
            raise EmptyAnswerError(
                f"summary {i + 1} of {len(answers)} from the language model was empty "
                f"({a!r}); expected a concept label (the original crashes here). Check the "
                "language model's answers to the summary prompt (its model, template, length)."
            )
        out.append(c)
        twin = background_twin(a)
        if twin is not None:
            twins.append(twin)
    return list(dict.fromkeys(out + twins))
