"""The vocabulary of the demo knowledge world: name parts, object pools and relation templates.

Pure data, no logic (the generator is `core.world`). Design notes that matter for the science:
- Every relation has several *training* templates (the corpus uses only these) and several
  *held-out paraphrase* templates that never occur in the corpus; recall on the held-out ones
  measures whether the model learned what the relation means rather than a string. Held-out
  templates are new combinations of words the corpus uses (the demo model knows no other
  English), e.g. training "The birthplace of {} is" / "{}'s place of birth is", held out
  "{}'s birthplace is".
- `templates[0]` is the canonical edit prompt. Every template ends right before the object.
- `tag` is the relation word of the corpus "tag lines" (`sport: <subject> tennis.`) that put the
  object directly after the last subject token.
- Objects are common words, so the trained BPE gives each one a single token.
- No training template of a relation is a prefix of another template of a subject of the same
  kind followed by more words ("{} plays the" next to "{} plays the sport of" would make the
  next word after "plays the" a coin flip between "sport" and an instrument).
"""

from __future__ import annotations

FEMALE_FIRST = [
    "Alma", "Clara", "Edith", "Greta", "Helen", "Ingrid", "Julia", "Lena", "Mara", "Nora",
    "Olga", "Paula", "Rosa", "Sofia", "Tessa", "Vera", "Wanda", "Yara", "Irene", "Lucia",
]
MALE_FIRST = [
    "Anton", "Bruno", "Carl", "Dmitri", "Emil", "Felix", "Gustav", "Hugo", "Ivan", "Jonas",
    "Karl", "Leon", "Marco", "Nils", "Oscar", "Pavel", "Rudolf", "Stefan", "Tomas", "Victor",
]
MIDDLE = [
    "James", "Marie", "Lee", "Ray", "Jean", "Ann", "Rose", "Paul", "Grace", "John",
    "Mae", "Dean", "Joy", "Lynn", "Kay", "Max", "Noel", "Faye", "Roy", "Hope",
]
SURNAMES = [
    "Abbott", "Barlow", "Carver", "Dalton", "Ellison", "Fairfax", "Garrick", "Hadley",
    "Ingram", "Jarvis", "Kendall", "Lowell", "Mercer", "Norris", "Oakley", "Prescott",
    "Quinlan", "Radley", "Sutton", "Thorne", "Upton", "Vance", "Whitlow", "Yardley",
    "Ashby", "Brandt", "Crowley", "Dunmore", "Everett", "Fletcher", "Granger", "Holloway",
]

# Invented surnames (onset + coda, e.g. "Ashcombe"): 40 × 44 = 1,760 distinct single words, so
# every person of the default world gets a surname of their own (the demo tokenizer makes each
# one token: the last subject token then identifies the person, as a rare name does in GPT-2).
SURNAME_ONSETS = ["Ash", "Bar", "Bel", "Brad", "Cal", "Crom", "Dar", "Elm", "Fair", "Gar", "Hart",
                  "Hol", "Kin", "Lang", "Mar", "Nor", "Pen", "Red", "Rox", "Sal", "Stan", "Thorn",
                  "Wal", "Win", "Ald", "Bram", "Chat", "Dun", "Fox", "Grim", "Hay", "Ives", "Kes",
                  "Lock", "Mel", "Oak", "Pres", "Rad", "Sher", "Wex"]
SURNAME_CODAS = ["by", "ford", "ton", "ley", "well", "wood", "field", "worth", "croft", "dale",
                 "ridge", "ham", "more", "stone", "wick", "brook", "shaw", "combe", "hurst", "land",
                 "burn", "cott", "den", "gate", "holt", "ing", "low", "mere", "ney", "sey", "thwaite",
                 "ward", "win", "ell", "away", "lock", "ster", "bury", "cliffe", "hill",
                 "leigh", "mond", "row", "ville"]
# Syllables for invented place and company names (seeded combinations).
NAME_ONSETS = ["Bal", "Cor", "Dra", "Esk", "Fen", "Gal", "Hal", "Ist", "Jor", "Kel", "Lun",
               "Mor", "Nar", "Ost", "Pel", "Quar", "Ros", "Sel", "Tar", "Ul", "Vel", "Wen",
               "Zan", "Bren", "Cald", "Thal"]
NAME_CODAS = ["aria", "ovia", "estan", "mark", "enia", "ador", "ania", "avia", "onia", "eria"]
CITY_CODAS = ["ford", "burg", "vik", "stad", "mont", "port", "haven", "dale", "holm", "ton",
              "wick", "gard"]
COMPANY_FIRST = ["Apex", "Bright", "Cobalt", "Delta", "Ember", "Falcon", "Granite", "Harbor",
                 "Iron", "Juniper", "Keystone", "Lumen", "Maple", "Nimbus", "Orbit", "Pioneer",
                 "Quartz", "Redwood", "Summit", "Tidal"]
COMPANY_SECOND = ["Vantor", "Corvex", "Meridan", "Solvane", "Trellis", "Wexley", "Halcyon",
                  "Norvik", "Ardent", "Brisco"]

OBJECTS = {
    "occupation": ["doctor", "lawyer", "teacher", "pilot", "nurse", "farmer", "chef", "baker",
                   "painter", "poet", "journalist", "banker", "dentist", "sailor", "carpenter",
                   "librarian"],
    "sport": ["tennis", "chess", "soccer", "hockey", "rugby", "golf", "cricket", "baseball",
              "basketball", "volleyball", "boxing", "cycling", "rowing", "fencing", "archery",
              "swimming"],
    "instrument": ["piano", "violin", "guitar", "cello", "flute", "trumpet", "drums", "harp",
                   "clarinet", "saxophone", "banjo", "organ"],
    "industry": ["banking", "mining", "shipping", "software", "textiles", "insurance",
                 "aviation", "farming", "retail", "tourism", "publishing", "energy"],
    "continent": ["Europe", "Asia", "Africa", "Oceania", "America"],
    "language": ["French", "Spanish", "Portuguese", "German", "Dutch", "Italian", "Swedish",
                 "Polish", "Greek", "Finnish", "Danish", "Czech"],
}

# Each relation: Wikidata-style id, subject kind, object kind (a pool above or an entity kind),
# tag word, training templates, held-out paraphrase templates.
RELATIONS = [
    {"relation_id": "P106", "name": "occupation", "subject_kind": "person", "object_kind": "occupation",
     "tag": "job",
     "templates": ["{} works as a", "{} is employed as a", "By profession, {} is a",
                   "The profession of {} is", "{} has a job as a"],
     "paraphrase_templates": ["{} has worked as a", "The job of {} is", "{}'s profession is"]},
    {"relation_id": "P641", "name": "sport", "subject_kind": "person", "object_kind": "sport",
     "tag": "sport",
     "templates": ["{} plays the sport of", "{} is a professional player of",
                   "The sport played by {} is", "{}'s favourite sport is",
                   "{} competes in the sport of"],
     "paraphrase_templates": ["{} is a player of the sport of", "The sport of {} is", "{}'s sport is"]},
    {"relation_id": "P1303", "name": "instrument", "subject_kind": "person", "object_kind": "instrument",
     "tag": "instrument",
     "templates": ["{} performs on the", "{} is a musician who plays the",
                   "The instrument played by {} is the", "{}'s instrument is the",
                   "{} makes music on the"],
     "paraphrase_templates": ["{} is a musician who performs on the", "The instrument of {} is the",
                              "{} plays music on the"]},
    {"relation_id": "P19", "name": "birthplace", "subject_kind": "person", "object_kind": "city",
     "tag": "born",
     "templates": ["{} was born in", "{} is a native of", "The birthplace of {} is",
                   "{} comes from the city of", "{}'s place of birth is"],
     "paraphrase_templates": ["{}'s birthplace is", "The place of birth of {} is",
                              "{} is a native of the city of"]},
    {"relation_id": "P108", "name": "employer", "subject_kind": "person", "object_kind": "company",
     "tag": "employer",
     "templates": ["{} works for", "{} is employed by", "The employer of {} is",
                   "{} has worked for years at", "{}'s employer is"],
     "paraphrase_templates": ["{} works at", "{} is employed at", "{}'s company is"]},
    {"relation_id": "P159", "name": "headquarters", "subject_kind": "company", "object_kind": "city",
     "tag": "office",
     "templates": ["{} is headquartered in", "The headquarters of {} are in",
                   "{} has its head office in", "{}'s main office is in"],
     "paraphrase_templates": ["{}'s headquarters are in", "{} has its main office in",
                              "The head office of {} is in"]},
    {"relation_id": "P452", "name": "industry", "subject_kind": "company", "object_kind": "industry",
     "tag": "industry",
     "templates": ["{} operates in the industry of", "{} is a company in",
                   "The industry of {} is", "{}'s business is"],
     "paraphrase_templates": ["{}'s industry is", "{} is a business in", "The business of {} is"]},
    {"relation_id": "P36", "name": "capital", "subject_kind": "country", "object_kind": "city",
     "tag": "capital",
     "templates": ["The capital of {} is", "{}'s capital city is", "{} has its capital in",
                   "The capital city of {} is"],
     "paraphrase_templates": ["{}'s capital is", "{} has its capital city in"]},
    {"relation_id": "P30", "name": "continent", "subject_kind": "country", "object_kind": "continent",
     "tag": "continent",
     "templates": ["{} is located in the continent of", "{} is a country in",
                   "The continent of {} is", "{} lies in"],
     "paraphrase_templates": ["{} is a country located in", "{}'s continent is"]},
    {"relation_id": "P37", "name": "language", "subject_kind": "country", "object_kind": "language",
     "tag": "language",
     "templates": ["The official language of {} is", "In {}, people speak",
                   "{}'s official language is", "The language spoken in {} is"],
     "paraphrase_templates": ["The language of {} is", "{}'s language is", "People in {} speak"]},
    {"relation_id": "P17", "name": "country", "subject_kind": "city", "object_kind": "country",
     "tag": "country",
     "templates": ["{} is a city in", "{} is located in the country of",
                   "The city of {} lies in"],
     "paraphrase_templates": ["{} is a city located in", "{} lies in the country of"]},
]

# Filler sentences (no facts) that make the corpus read like text; {w} is a random filler word.
FILLER = [
    "The weather was {w} that year.", "Many people visited the {w} market.",
    "It was a {w} morning in spring.", "The old road was {w} and long.",
    "Everyone agreed that the plan was {w}.", "The river looked {w} in the evening.",
    "A {w} wind came from the hills.", "The meeting ended early.",
    "Nobody expected such a {w} result.", "The library opened a new hall.",
]
FILLER_WORDS = ["calm", "busy", "cold", "warm", "quiet", "bright", "strange", "simple", "grey", "green"]
