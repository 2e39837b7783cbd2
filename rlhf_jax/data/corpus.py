"""Embedded default English corpus: short, synthetic product and media reviews.

The corpus exists so the whole pipeline (pretraining, reward modelling, RL) runs
offline with no downloads. It is designed for a tiny byte-level Transformer:

* a moderate vocabulary (a few hundred distinct words) that a small model can
  learn in minutes, while still reading as grammatical English;
* clear sentiment carried by common words the VADER lexicon knows (great,
  awful, boring, ...), because a later RL stage uses VADER as its gold judge;
* openings ("I watched ...", "Last month, my sister and I ...") that are shared
  by every sentiment, so a continuation's sentiment is not fixed by its prompt.

Every sentiment word the generator can emit is listed in the pools below, and
neutral text (names, openings, filler) avoids VADER-scored words, so the word
sets returned by :func:`sentiment_words` classify documents exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

MIN_CHARS, MAX_CHARS = 120, 400
MAX_SENTENCES = 5

# Roughly 40/40/15/5: mostly polar documents, a few mixed and a few neutral ones.
SENTIMENT_WEIGHTS = {"positive": 40, "negative": 40, "mixed": 15, "neutral": 5}

# Adjective families: (positive pool, negative pool). Every word here is in the
# VADER lexicon with the matching sign; neutral adjectives are in NEUTRAL_ADJECTIVES.
ADJECTIVE_FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "quality": (("great", "excellent", "wonderful", "fantastic", "amazing", "superb", "brilliant",
                 "impressive"), ("awful", "terrible", "disappointing", "horrible", "poor", "bad",
                                 "weak", "dreadful")),
    "fun": (("fun", "exciting", "enjoyable", "charming", "delightful", "wonderful"),
            ("boring", "dull", "annoying", "painful", "lame", "stupid")),
    "looks": (("beautiful", "gorgeous", "stunning", "lovely", "elegant"),
              ("ugly", "messy", "depressing", "awful", "dreadful")),
    "food": (("delicious", "fresh", "amazing", "excellent", "perfect"),
             ("disgusting", "awful", "terrible", "horrible", "bad")),
    "people": (("friendly", "helpful", "kind", "cheerful", "pleasant"),
               ("rude", "unfriendly", "careless", "useless", "annoying")),
    "comfort": (("comfortable", "clean", "pleasant", "relaxing", "peaceful"),
                ("uncomfortable", "dirty", "stressful", "messy", "horrible")),
    "price": (("fair", "great", "excellent"), ("outrageous", "ridiculous", "terrible", "awful")),
    "tech": (("excellent", "impressive", "brilliant", "great", "amazing"),
             ("useless", "terrible", "disappointing", "poor", "awful")),
}
NEUTRAL_ADJECTIVES = ("average", "ordinary", "standard", "typical", "normal", "basic", "simple")

POSITIVE_INTENSIFIERS = ("really", "truly", "so", "absolutely")
NEGATIVE_INTENSIFIERS = ("really", "so", "absolutely")
POSITIVE_VERBS = ("loved", "enjoyed", "adored", "liked")
NEGATIVE_VERBS = ("hated", "disliked")
POSITIVE_CONNECTIVES = ("Also,", "Besides,", "Luckily,", "Even better,")
NEGATIVE_CONNECTIVES = ("Also,", "Besides,", "Sadly,", "Even worse,")
# Sentiment words used by fixed templates rather than adjective pools.
EXTRA_POSITIVE = frozenset(
    {"loved", "enjoyed", "adored", "liked", "truly", "luckily", "best", "better", "worth"})
EXTRA_NEGATIVE = frozenset({"hated", "disliked", "sadly", "worst", "worse", "waste", "avoid"})

# Shared name parts. None of these carry VADER sentiment (no "Grace", "Lost", ...).
TITLE_ADJECTIVES = ("Silent", "Hidden", "Northern", "Golden", "Distant", "Midnight", "Crimson",
                    "Paper", "Iron", "Velvet", "Winter", "Summer", "Copper", "Hollow")
TITLE_NOUNS = ("River", "Harbor", "Garden", "Mountain", "Letter", "Station", "Forest", "Island",
               "Bridge", "Lantern", "Road", "Window", "Orchard", "Tower", "Valley", "Compass")
BAND_ANIMALS = ("Foxes", "Owls", "Wolves", "Ravens", "Tigers", "Horses", "Sparrows", "Otters")
FIRST_NAMES = ("Anna", "Ben", "Clara", "David", "Elena", "Frank", "Henry", "Iris", "Jack", "Laura",
               "Maria", "Noah", "Olivia", "Peter", "Rosa", "Sam", "Tom")
LAST_NAMES = ("Baker", "Carter", "Doyle", "Evans", "Fisher", "Garcia", "Hughes", "Kim", "Lopez",
              "Miller", "Morgan", "Novak", "Parker", "Reed", "Santos", "Turner", "Walsh")
PHONE_BRANDS = ("Zentra", "Novix", "Orbis", "Lumo", "Tarvo", "Vexa")
COMPANIONS = ("my sister", "my brother", "my parents", "my cousin", "my partner", "two coworkers",
              "my kids", "my roommate")
OCCASIONS = ("last weekend", "on Friday night", "yesterday", "last month", "during the summer",
             "after work", "on my birthday", "a few days ago")


@dataclass(frozen=True)
class Aspect:
  """Something a review comments on, e.g. the acting of a film."""

  phrase: str
  plural: bool
  family: str


@dataclass(frozen=True)
class Domain:
  """A review domain: what is reviewed, how it is named, what people comment on."""

  kind: str  # noun used in "a great movie"
  verb: str  # past tense used in "I watched X"
  again: str  # completes "I will never ... "
  make_name: Callable[[random.Random], str]
  openings: tuple[str, ...]  # domain-specific templates with {name}
  aspects: tuple[Aspect, ...]


def _title(rng: random.Random) -> str:
  article = "The " if rng.random() < 0.6 else ""
  return f"{article}{rng.choice(TITLE_ADJECTIVES)} {rng.choice(TITLE_NOUNS)}"


def _band(rng: random.Random) -> str:
  return f"{rng.choice(TITLE_ADJECTIVES)} {rng.choice(BAND_ANIMALS)}"


def _book_name(rng: random.Random) -> str:
  return f"{_title(rng)} by {rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _album_name(rng: random.Random) -> str:
  return f"{_title(rng)} by the {_band(rng)}"


def _restaurant_name(rng: random.Random) -> str:
  return f"{rng.choice(LAST_NAMES)}'s {rng.choice(('Kitchen', 'Grill', 'Bistro', 'Diner'))}"


def _cafe_name(rng: random.Random) -> str:
  if rng.random() < 0.5:
    return f"the {rng.choice(TITLE_NOUNS)} Cafe"
  return f"Cafe {rng.choice(FIRST_NAMES)}"


def _hotel_name(rng: random.Random) -> str:
  if rng.random() < 0.5:
    return f"the {rng.choice(LAST_NAMES)} Hotel"
  return f"the {rng.choice(TITLE_ADJECTIVES)} {rng.choice(TITLE_NOUNS)} Inn"


def _concert_name(rng: random.Random) -> str:
  return f"the {_band(rng)} concert at {rng.choice(TITLE_NOUNS)} Hall"


def _phone_name(rng: random.Random) -> str:
  model = rng.choice(("X", "S", "Pro ", "Lite ", "Max "))
  return f"the {rng.choice(PHONE_BRANDS)} {model}{rng.randint(2, 12)}"


def _park_name(rng: random.Random) -> str:
  return f"{rng.choice(LAST_NAMES + TITLE_NOUNS)} Park"


def _aspects(spec: str) -> tuple[Aspect, ...]:
  """Parse "phrase/family" items; a trailing '+' on the family marks a plural phrase."""
  parsed = []
  for item in spec.split(";"):
    phrase, family = item.strip().split("/")
    parsed.append(Aspect(phrase, family.endswith("+"), family.rstrip("+")))
  return tuple(parsed)


DOMAINS: tuple[Domain, ...] = (
    Domain(
        "movie", "watched", "watch it again", _title,
        ("We went to see {name} at the cinema {when}.",
         "I finally saw {name}, the new {genre} film."),
        _aspects("the acting/quality; the plot/fun; the soundtrack/quality; the ending/quality;"
                 " the dialogue/fun; the characters/fun+; the visuals/looks+;"
                 " the cast/quality")),
    Domain(
        "book", "read", "read it again", _book_name,
        ("I picked up {name} at the library {when}.",
         "I read {name}, a {genre} novella, on a long trip."),
        _aspects("the writing/quality; the plot/fun; the characters/fun+; the ending/quality;"
                 " the dialogue/fun; the cover/looks; the main character/fun")),
    Domain(
        "restaurant", "ate at", "eat there again", _restaurant_name,
        ("We booked a table at {name} {when}.", "I had dinner at {name} with {who}."),
        _aspects("the food/food; the service/people; the prices/price+; the portions/quality+;"
                 " the staff/people; the desserts/food+; the dining room/comfort")),
    Domain(
        "hotel", "stayed at", "stay there again", _hotel_name,
        ("We spent three nights at {name} in the spring.",
         "I checked into {name} for a work trip."),
        _aspects("the room/comfort; the bed/comfort; the staff/people; the breakfast/food;"
                 " the view/looks; the pool/comfort; the bathroom/comfort; the prices/price+")),
    Domain(
        "album", "listened to", "listen to it again", _album_name,
        ("I had {name} on repeat {when}.", "I bought {name} on vinyl {when}."),
        _aspects("the songs/fun+; the lyrics/quality+; the vocals/quality+;"
                 " the production/quality;"
                 " the guitar work/quality; the final track/fun; the album cover/looks")),
    Domain(
        "game", "tried", "pick it up again", _title,
        ("I spent a whole weekend on {name}.", "I downloaded {name}, the new {genre} game."),
        _aspects("the graphics/looks+; the gameplay/fun; the controls/tech+; the story/fun;"
                 " the levels/fun+; the music/quality; the puzzles/fun+")),
    Domain(
        "cafe", "tried", "go back", _cafe_name,
        ("I went to {name} for a coffee {when}.", "We met up at {name} {when}."),
        _aspects("the coffee/food; the pastries/food+; the staff/people; the atmosphere/comfort;"
                 " the prices/price+; the seating/comfort; the music/quality")),
    Domain(
        "concert", "went to", "see them live again", _concert_name,
        ("I had tickets for {name} {when}.", "We drove two hours to get to {name}."),
        _aspects("the band/quality; the sound/quality; the crowd/people; the setlist/fun;"
                 " the venue/comfort; the lighting/looks; the encore/fun")),
    Domain(
        "phone", "bought", "buy from them again", _phone_name,
        ("I switched to {name} {when}.", "My old phone was getting slow, so I ordered {name}."),
        _aspects("the battery/tech; the screen/tech; the camera/tech; the speakers/tech+;"
                 " the design/looks; the software/tech; the charger/tech")),
    Domain(
        "park", "visited", "go back", _park_name,
        ("We took the kids to {name} {when}.", "I went for a long walk in {name} {when}."),
        _aspects("the trails/fun+; the gardens/looks+; the playground/fun; the lake/looks;"
                 " the views/looks+; the picnic area/comfort; the paths/comfort+")),
)
GENRES = ("mystery", "drama", "western", "fantasy", "science fiction", "detective")

# Aspect comments. {a}/{b}: "the plot was boring" for the first/second aspect,
# {p}: the first aspect's phrase; capitalised variants start a sentence.
COMMENT_TEMPLATES = {
    "polar": ("{A}.", "{P} {be} {intensifier} {adj}.", "I thought {a}.", "{A}, and {b} too.",
              "I {verb} {p}.", "The {best} part was {p}, which {be} {adj}.", "{connective} {a}."),
    "neutral": ("{A}.", "I thought {a}.", "{A}, and {b} too."),
}

# Shared openings: the first words say nothing about the sentiment to come.
SHARED_OPENINGS = (
    "I {verb} {name} {when}.",
    "Last month, {who} and I {verb} {name}.",
    "A few days ago I finally {verb} {name}.",
    "{Who} told me about {name}, so I gave it a try.",
    "Here are my thoughts on {name}.",
    "I {verb} {name} with {who} {when}.",
)


def _with_article(word: str) -> str:
  return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _capitalize(sentence: str) -> str:
  return sentence[0].upper() + sentence[1:]


def _adjective(rng: random.Random, family: str, sentiment: str, avoid: str = "") -> str:
  """A random adjective of ``sentiment`` from ``family``, other than ``avoid``."""
  if sentiment == "neutral":
    pool = NEUTRAL_ADJECTIVES
  else:
    positive, negative = ADJECTIVE_FAMILIES[family]
    pool = positive if sentiment == "positive" else negative
  return rng.choice([word for word in pool if word != avoid])


def _overall_adjective(rng: random.Random, sentiment: str) -> str:
  """An adjective that can describe the whole experience ("a boring movie")."""
  return _adjective(rng, rng.choice(("quality", "fun")), sentiment)


def _clause(rng: random.Random, aspect: Aspect, sentiment: str, avoid: str = "") -> str:
  """"the plot was boring" -- the building block of aspect comments."""
  verb = "were" if aspect.plural else "was"
  return f"{aspect.phrase} {verb} {_adjective(rng, aspect.family, sentiment, avoid)}"


def _opening(rng: random.Random, domain: Domain, name: str) -> str:
  template = rng.choice(SHARED_OPENINGS + domain.openings)
  who = rng.choice(COMPANIONS)
  text = template.format(name=name,
                         verb=domain.verb,
                         when=rng.choice(OCCASIONS),
                         who=who,
                         Who=_capitalize(who),
                         genre=rng.choice(GENRES))
  return _capitalize(text)


def _comment(rng: random.Random, template: str, aspects: list[Aspect], sentiment: str) -> str:
  """Fill a COMMENT_TEMPLATES entry about one or two aspects of one polarity."""
  first, second = aspects
  positive = sentiment == "positive"
  clause = _clause(rng, first, sentiment)
  # A distinct second adjective: "the lyrics were dreadful, and the vocals were dreadful too"
  # reads badly.
  second_clause = _clause(rng, second, sentiment, avoid=clause.split()[-1])
  fields = {
      "a": clause,
      "A": _capitalize(clause),
      "b": second_clause,
      "p": first.phrase,
      "P": _capitalize(first.phrase),
      "be": "were" if first.plural else "was",
      "adj": _adjective(rng, first.family, sentiment),
      "best": "best" if positive else "worst",
      "intensifier": rng.choice(POSITIVE_INTENSIFIERS if positive else NEGATIVE_INTENSIFIERS),
      "verb": rng.choice(POSITIVE_VERBS if positive else NEGATIVE_VERBS),
      "connective": rng.choice(POSITIVE_CONNECTIVES if positive else NEGATIVE_CONNECTIVES),
  }
  return template.format(**fields)


def _mixed_comment(rng: random.Random, aspects: list[Aspect]) -> str:
  """Praise and complaint joined by "but", in either order."""
  first_side, second_side = rng.sample(["positive", "negative"], 2)
  first, second = _clause(rng, aspects[0], first_side), _clause(rng, aspects[1], second_side)
  return f"{_capitalize(first)}, but {second}."


def _verdict(rng: random.Random, domain: Domain, sentiment: str) -> str:
  """A whole-experience judgement, placed right after the opening."""
  if sentiment == "mixed":
    good, bad = _overall_adjective(rng, "positive"), _overall_adjective(rng, "negative")
    return f"It was {good} in some ways and {bad} in others."
  adjective = _overall_adjective(rng, sentiment)
  if sentiment == "neutral" or rng.random() < 0.5:
    return f"It was {_with_article(adjective)} {domain.kind}."
  return f"What {_with_article(adjective)} {domain.kind}!"


def _comparison(rng: random.Random, domain: Domain, sentiment: str) -> str:
  other = domain.make_name(rng)
  if sentiment == "neutral" or sentiment == "mixed":
    return f"It was about the same as {other}."
  if rng.random() < 0.5:
    better = "better" if sentiment == "positive" else "worse"
    return f"It was {rng.choice(('much', 'far', 'a lot'))} {better} than {other}."
  return f"Compared to {other}, this one was {_overall_adjective(rng, sentiment)}."


def _closing(rng: random.Random, domain: Domain, sentiment: str) -> str:
  adjective = _overall_adjective(rng, sentiment) if sentiment != "mixed" else ""
  overall = f"Overall, {_with_article(adjective)} {domain.kind}." if adjective else ""
  choices = {
      "positive": ("I would recommend it to anyone.", f"I can not wait to {domain.again}!",
                   "Five stars from me!", "It was worth every penny.", overall),
      "negative": ("I would not recommend it.", f"I will never {domain.again}.", "Avoid it.",
                   "What a waste of time.", "Why did I waste a whole day on this?", overall),
      "mixed":
          ("Overall, I have mixed feelings about it.", f"I might {domain.again}, but maybe not.",
           "It had some great moments and some awful ones."),
      "neutral":
          (f"I might {domain.again} at some point.", "It was about what I expected.", overall),
  }[sentiment]
  return rng.choice(choices)


def _aspect_pairs(rng: random.Random, domain: Domain, count: int) -> list[list[Aspect]]:
  """Distinct aspects for each comment, so a review never repeats itself."""
  shuffled = rng.sample(domain.aspects, len(domain.aspects))
  return [[shuffled[(2 * i) % len(shuffled)], shuffled[(2 * i + 1) % len(shuffled)]]
          for i in range(count)]


def _body(rng: random.Random, domain: Domain, sentiment: str) -> list[str]:
  """Candidate middle sentences, most important first (the tail may be trimmed)."""
  pairs = _aspect_pairs(rng, domain, 3)
  # Distinct templates per document, so a review never repeats a sentence shape.
  templates = rng.sample(COMMENT_TEMPLATES["neutral" if sentiment == "neutral" else "polar"], 3)
  if sentiment == "mixed":
    sides = rng.sample(["positive", "negative"], 2)
    comments = [_mixed_comment(rng, pairs[0])]
    comments += [
        _comment(rng, template, pair, side)
        for template, pair, side in zip(templates, pairs[1:], sides)
    ]
  else:
    comments = [_comment(rng, t, pair, sentiment) for t, pair in zip(templates, pairs)]
  if rng.random() < 0.35:
    # After the opening, so the first words of a document stay sentiment-free.
    comments.insert(rng.randrange(2), _verdict(rng, domain, sentiment))
  if rng.random() < 0.3:
    comments.append(_comparison(rng, domain, sentiment))
  return comments


def _fit(opening: str, body: list[str], closing: str, wanted: int) -> str:
  """Join sentences, growing or trimming the body towards [MIN_CHARS, MAX_CHARS]."""

  def joined(count: int) -> str:
    return " ".join([opening, *body[:count], closing])

  count = min(wanted, len(body))
  while len(joined(count)) < MIN_CHARS and count < min(len(body), MAX_SENTENCES - 2):
    count += 1
  while len(joined(count)) > MAX_CHARS and count > 1:
    count -= 1
  return joined(count)


def _pick_sentiment(rng: random.Random) -> str:
  labels = list(SENTIMENT_WEIGHTS)
  return rng.choices(labels, weights=[SENTIMENT_WEIGHTS[label] for label in labels])[0]


def _labeled_document(seed: int, index: int) -> tuple[str, str]:
  # A string seed is hashed with sha512, so document `index` is identical in
  # every process and Python version and independent of every other document.
  rng = random.Random(f"rlhf_jax-reviews:{seed}:{index}")
  domain = rng.choice(DOMAINS)
  sentiment = _pick_sentiment(rng)
  name = domain.make_name(rng)
  opening = _opening(rng, domain, name)
  while True:
    # Rarely (~1 in 20000) every candidate sentence is short; drawing a fresh
    # body from the same stream keeps the document deterministic.
    body = _body(rng, domain, sentiment)
    closing = _closing(rng, domain, sentiment)
    text = _fit(opening, body, closing, wanted=rng.randint(1, 3))
    if MIN_CHARS <= len(text) <= MAX_CHARS:
      return text, sentiment


def generate_labeled_reviews(num_docs: int, seed: int = 0, start: int = 0) -> list[tuple[str, str]]:
  """Like :func:`generate_reviews`, paired with each document's designed sentiment.

    The label is one of "positive", "negative", "mixed", "neutral".
    """
  if num_docs < 0 or start < 0:
    raise ValueError(f"num_docs and start must be >= 0, got num_docs={num_docs}, start={start}")
  return [_labeled_document(seed, index) for index in range(start, start + num_docs)]


def generate_reviews(num_docs: int, seed: int = 0, start: int = 0) -> list[str]:
  """Return review documents ``start .. start + num_docs - 1`` of the corpus for ``seed``.

    Document i depends only on (seed, i), so disjoint index ranges give disjoint,
    reproducible train/eval splits: ``generate_reviews(10, s, start=5)`` equals
    ``generate_reviews(20, s)[5:15]``.
    """
  return [text for text, _ in generate_labeled_reviews(num_docs, seed, start)]


def sentiment_words() -> tuple[frozenset[str], frozenset[str]]:
  """(positive, negative) lower-case words the generator uses to express sentiment."""
  positive = set(EXTRA_POSITIVE)
  negative = set(EXTRA_NEGATIVE)
  for good, bad in ADJECTIVE_FAMILIES.values():
    positive.update(good)
    negative.update(bad)
  return frozenset(positive), frozenset(negative)
