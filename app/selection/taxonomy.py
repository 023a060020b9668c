"""Content categories of a query, and whether it is a sensitive topic: data and pure functions.

`CATEGORIES` is an IAB-tier-1-like set (IAB Content Taxonomy 1.0's tier-1 ids, ``IAB1`` … ``IAB23``)
with the topics no ad should appear beside split out as categories of their own (ids
``IAB<tier 1>-<topic>``): each has a name and several describing phrases, written as people ask about
the topic. A query's similarity to a category is its largest cosine to one of the category's phrases.
`SENSITIVE_DEFAULT` (SELECTION_SENSITIVE_CATEGORIES) names the sensitive ones: medical conditions,
mental health, addiction, sexual and reproductive health, politics, minors (a child speaking, child
safety), death and grief, financial hardship, legal trouble, adult content and violence or illegal
activity — OpenAI's ad policy (health, mental health, politics, users under 18) and Google's sensitive
ad categories (personal hardship, tragedy). Fitness, nutrition, personal finance, parenting and law or
government services are ordinary categories. Pure (numpy only); see docs/DESIGN.md § Selection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Category:
    id: str
    name: str
    phrases: tuple[str, ...]


def _c(category_id: str, name: str, *phrases: str) -> Category:
    return Category(category_id, name, phrases)


CATEGORIES: tuple[Category, ...] = (
    _c(
        "IAB1",
        "Arts & Entertainment",
        "movies, music, concerts and books",
        "celebrity and television shows",
        "art museums and painting",
        "video games and streaming entertainment",
    ),
    _c(
        "IAB2",
        "Automotive",
        "buying a new or used car",
        "car repair and maintenance",
        "electric vehicles and charging",
        "motorcycles and auto parts",
    ),
    _c(
        "IAB3",
        "Business",
        "starting and running a small business",
        "marketing and advertising a company",
        "business software and e-commerce",
        "entrepreneurship and startups",
    ),
    _c(
        "IAB4",
        "Careers",
        "finding a job and writing a resume",
        "job interviews and career change",
        "freelance work and remote jobs",
        "asking for a raise at work",
    ),
    _c(
        "IAB5",
        "Education",
        "online courses and learning new skills",
        "studying for exams and college",
        "learning a foreign language",
        "teaching and tutoring",
        "personal development and self-improvement skills",
    ),
    _c(
        "IAB6",
        "Family & Parenting",
        "parenting tips for raising kids",
        "baby products and toddler gear",
        "family activities and vacations with children",
        "planning a family",
    ),
    _c(
        "IAB7",
        "Health & Fitness",
        "exercise and workout routines",
        "staying fit and running",
        "healthy eating and nutrition",
        "yoga and stretching",
        "sleep habits and wellness routines",
    ),
    _c(
        "IAB8",
        "Food & Drink",
        "cooking recipes and meal planning",
        "restaurants and dining out",
        "wine, beer and cocktails",
        "baking bread and desserts",
    ),
    _c(
        "IAB9",
        "Hobbies & Interests",
        "photography, crafts and DIY projects",
        "playing a musical instrument",
        "gardening and board games",
        "collecting and making handmade gifts",
    ),
    _c(
        "IAB10",
        "Home & Garden",
        "home decor and interior design",
        "furniture and home improvement",
        "energy efficient home and appliances",
        "growing vegetables in the garden",
    ),
    _c(
        "IAB11",
        "Law & Government",
        "renewing a passport or driver's license",
        "how to file taxes",
        "registering a business with the government",
        "understanding consumer rights",
    ),
    _c(
        "IAB12",
        "News",
        "latest news headlines today",
        "world news and current events",
        "local news and weather",
    ),
    _c(
        "IAB13",
        "Personal Finance",
        "investing in stocks and funds",
        "saving for retirement",
        "credit cards, banking and budgeting",
        "buying insurance and mortgages",
    ),
    _c(
        "IAB14",
        "Society",
        "dating and relationships",
        "planning a wedding",
        "friendship and etiquette",
        "volunteering in the community",
    ),
    _c(
        "IAB15",
        "Science",
        "space, astronomy and physics",
        "biology, chemistry and nature",
        "climate science and the environment",
    ),
    _c("IAB16", "Pets", "dog and cat care", "pet food and toys", "training a puppy", "veterinary checkups"),
    _c(
        "IAB17",
        "Sports",
        "football, basketball and tennis",
        "watching sports games",
        "cycling, hiking and outdoor sports",
        "sports equipment",
    ),
    _c(
        "IAB18",
        "Style & Fashion",
        "clothing and fashion trends",
        "skin care and beauty products",
        "makeup, hair care and cosmetics",
        "jewelry and accessories",
    ),
    _c(
        "IAB19",
        "Technology & Computing",
        "laptops, phones and gadgets",
        "software, apps and programming",
        "cybersecurity and data protection",
        "learning to code",
    ),
    _c(
        "IAB20",
        "Travel",
        "planning a trip and booking hotels",
        "cheap flights and vacation packages",
        "eco-friendly and sustainable travel",
        "hiking trails and national parks",
    ),
    _c("IAB21", "Real Estate", "buying a house", "renting an apartment", "selling property"),
    _c("IAB22", "Shopping", "best deals and discounts", "online shopping and gifts", "product reviews"),
    _c(
        "IAB23",
        "Religion & Spirituality",
        "religious faith and prayer",
        "meditation and mindfulness",
        "spiritual practices",
    ),
    # --- sensitive topics (SENSITIVE_DEFAULT) ---------------------------------------------------
    _c(
        "IAB7-medical",
        "Medical conditions",
        "what are the symptoms of this disease",
        "I was diagnosed with cancer",
        "how to treat diabetes or high blood pressure",
        "side effects of my prescription medication",
        "is this rash or chest pain serious, should I see a doctor",
        "recovering from surgery or an illness",
        "chronic pain and medical treatment options",
    ),
    _c(
        "IAB7-mental",
        "Mental health",
        "I feel depressed and hopeless",
        "struggling with my mental health and emotional wellbeing",
        "dealing with anxiety and panic attacks",
        "finding a therapist or psychiatrist",
        "I have thoughts of suicide or self-harm",
        "coping with stress, burnout and trauma",
        "eating disorder, bipolar disorder or ADHD",
    ),
    _c(
        "IAB7-substance",
        "Addiction & substance abuse",
        "how to quit drinking alcohol",
        "I am addicted to drugs",
        "opioid addiction recovery and rehab",
        "quitting smoking or vaping",
        "gambling addiction help",
    ),
    _c(
        "IAB7-sexual",
        "Sexual & reproductive health",
        "am I pregnant, pregnancy symptoms",
        "birth control and contraception options",
        "sexually transmitted infections and testing",
        "abortion and fertility treatment",
        "erectile dysfunction and sexual health",
    ),
    _c(
        "IAB11-politics",
        "Politics & elections",
        "who should I vote for in the election",
        "political parties and candidates",
        "the president and government policy debate",
        "immigration policy and abortion laws",
        "left wing versus right wing politics",
        "protests and activism",
    ),
    _c(
        "IAB6-minors",
        "Minors & child safety",
        "I am 12 years old and need help with my homework",
        "I'm a teenager and my parents don't understand me",
        "bullying at school",
        "child abuse and keeping children safe online",
        "I am a kid",
    ),
    _c(
        "IAB14-tragedy",
        "Death, grief & tragedy",
        "my mother just died, how do I cope with grief",
        "planning a funeral",
        "a loved one passed away",
        "natural disaster, shooting or terrorist attack victims",
        "losing a pet or a child",
    ),
    _c(
        "IAB13-hardship",
        "Financial hardship",
        "I can't pay my rent and I'm being evicted",
        "drowning in debt, considering bankruptcy",
        "I lost my job and have no money for food",
        "debt collectors are calling me",
        "applying for unemployment benefits or food stamps",
    ),
    _c(
        "IAB11-legal",
        "Legal trouble",
        "I was arrested, what are my rights",
        "I am being sued",
        "getting a divorce and custody battle",
        "my visa expired, immigration status problems",
        "charged with a DUI or a crime",
    ),
    _c(
        "IAB25",
        "Adult content",
        "pornography and explicit sexual content",
        "adult websites and escorts",
        "sexual fetishes",
    ),
    _c(
        "IAB26",
        "Violence & illegal activity",
        "how to make a weapon or a bomb",
        "buying illegal drugs",
        "hacking into someone's account",
        "violent extremism and hate speech",
    ),
)

SENSITIVE_DEFAULT: tuple[str, ...] = tuple(
    c.id for c in CATEGORIES if "-" in c.id or c.id in ("IAB25", "IAB26")
)
# A query's content categories are those this similar (and more): on the tuning set's ordinary queries
# (bench/selection_tuning.json) the category it is about passes, neighbouring topics mostly do not.
CATEGORY_THRESHOLD = 0.40
CATEGORY_IDS: frozenset[str] = frozenset(c.id for c in CATEGORIES)


@dataclass(frozen=True)
class CategoryVectors:
    """Each category's phrase vectors, stacked: rows of `matrix` belong to `owners[row]`."""

    ids: tuple[str, ...]
    owners: np.ndarray  # int index into ids, one per phrase row
    matrix: np.ndarray  # (phrases, dim) unit rows

    def similarities(self, query_vec: np.ndarray) -> dict[str, float]:
        """Each category's similarity to the query: the largest cosine to one of its phrases."""
        cosines = self.matrix @ query_vec
        best = np.full(len(self.ids), -1.0, dtype=np.float64)
        np.maximum.at(best, self.owners, cosines)
        return {category_id: float(best[i]) for i, category_id in enumerate(self.ids)}


def phrase_table(categories: Iterable[Category] = CATEGORIES) -> tuple[tuple[str, ...], list[int], list[str]]:
    """(ids, owner index per phrase, phrases): what to embed to build `CategoryVectors`."""
    ids: list[str] = []
    owners: list[int] = []
    phrases: list[str] = []
    for index, category in enumerate(categories):
        ids.append(category.id)
        owners += [index] * len(category.phrases)
        phrases += category.phrases
    return tuple(ids), owners, phrases


def category_vectors(ids: tuple[str, ...], owners: list[int], phrase_vecs: np.ndarray) -> CategoryVectors:
    return CategoryVectors(ids=ids, owners=np.asarray(owners, dtype=np.int64), matrix=phrase_vecs)


def query_categories(query_vec: np.ndarray, category_vecs: CategoryVectors, threshold: float) -> list[str]:
    """The categories whose similarity to the query reaches `threshold`, most similar first."""
    scored = category_vecs.similarities(query_vec)
    return [cid for cid, sim in sorted(scored.items(), key=lambda kv: (-kv[1], kv[0])) if sim >= threshold]


def sensitive_match(
    query_vec: np.ndarray,
    category_vecs: CategoryVectors,
    sensitive: Iterable[str],
    threshold: float,
    similarities: Mapping[str, float] | None = None,
) -> tuple[str, float] | None:
    """The query's sensitive topic: the most similar sensitive category when its similarity reaches
    `threshold` and no other (ordinary) category is more similar, else None. The second condition keeps
    "how to improve my sleep schedule" (wellness) or "how to file taxes" (government) out."""
    scored = similarities if similarities is not None else category_vecs.similarities(query_vec)
    flagged = set(sensitive)
    best = max(((sim, cid) for cid, sim in scored.items() if cid in flagged), default=None)
    ordinary = max((sim for cid, sim in scored.items() if cid not in flagged), default=-1.0)
    if best is None or best[0] < threshold or best[0] < ordinary:
        return None
    return best[1], best[0]
