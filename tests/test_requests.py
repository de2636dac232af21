"""Edit requests: readers (CSV, JSON, CounterFact, zsRE), relation names, and every validation
problem reported with its row and field."""

from __future__ import annotations

import json

import pytest

from core.requests import (EditRequest, RequestValidationError, load_dataset_requests, read_requests,
                           requests_from_rows, validate_requests)
from tests.tiny import make_tokenizer

RELATIONS = [{"relation_id": "P641", "name": "sport",
              "templates": ["{} plays the sport of", "{} is a player of"],
              "paraphrase_templates": ["{} is an athlete in the sport of", "The sport of {} is"]}]


def problems_of(exc_info) -> list[str]:
    return [str(p) for p in exc_info.value.problems]


def test_csv_with_templates_names_and_true_objects(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("subject,relation,object,true_object\n"
                 "Miles Davis,{} plays the,chess,trumpet\n"
                 "Orla Venn,sport,tennis,\n"
                 "Kara Selwyn,P641,golf,\n", encoding="utf-8")
    reqs = read_requests(f, relations=RELATIONS)
    assert reqs[0] == EditRequest("{} plays the", "Miles Davis", "chess", "trumpet")
    assert reqs[1].prompt == "{} plays the sport of" and reqs[1].relation_id == "P641"
    assert reqs[1].paraphrase_prompts == ("Orla Venn is an athlete in the sport of", "The sport of Orla Venn is")
    assert reqs[1].target_true is None and reqs[2].relation_id == "P641"
    assert reqs[0].filled == "Miles Davis plays the"


def test_json_list_jsonl_bytes_and_roundtrip(tmp_path):
    r = EditRequest("{} plays the", "Miles Davis", "chess", "trumpet", paraphrase_prompts=("Miles Davis plays",),
                    case_id=7)
    assert EditRequest.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    (tmp_path / "a.json").write_text(json.dumps([r.to_dict()]))
    assert read_requests(tmp_path / "a.json") == [r]
    data = (json.dumps({"subject": "A B", "prompt": "{} is", "object": "x"}) + "\n"
            + json.dumps({"subject": "C D", "prompt": "{} is", "target_new": "y"}) + "\n").encode()
    got = read_requests(data)                                   # uploaded bytes, JSON lines
    assert [(g.subject, g.target_new) for g in got] == [("A B", "x"), ("C D", "y")]


def test_counterfact_and_zsre_records_as_published(tmp_path):
    cf = [{"case_id": 0, "pararel_idx": 2796, "requested_rewrite": {
        "prompt": "The mother tongue of {} is", "relation_id": "P103",
        "target_new": {"str": "English", "id": "Q1860"}, "target_true": {"str": "French", "id": "Q150"},
        "subject": "Danielle Darrieux"},
        "paraphrase_prompts": ["Shayna does this and Danielle Darrieux's mother tongue is"],
        "neighborhood_prompts": ["The mother tongue of Léon Blum is"], "attribute_prompts": [],
        "generation_prompts": ["Danielle Darrieux's mother tongue is"]}]
    (tmp_path / "cf.json").write_text(json.dumps(cf))
    r = read_requests(tmp_path / "cf.json")[0]
    assert (r.prompt, r.subject, r.target_new, r.target_true, r.relation_id, r.case_id) == (
        "The mother tongue of {} is", "Danielle Darrieux", "English", "French", "P103", 0)
    assert r.neighborhood_prompts == ("The mother tongue of Léon Blum is",)
    zs = [{"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?",
           "pred": "x", "rephrase": "What university did Watts Humphrey go to?", "alt": "y",
           "answers": ["Illinois Institute of Technology"], "loc": "nq question: who sang x",
           "loc_ans": "Bob", "cond": "..."}]
    (tmp_path / "zsre.json").write_text(json.dumps(zs))
    z = read_requests(tmp_path / "zsre.json")[0]
    assert z.prompt == "What university did {} attend?" and z.target_new == "Illinois Institute of Technology"
    assert z.neighborhood_prompts == ("nq question: who sang x?",) and z.neighborhood_target == "Bob"
    zs[0]["src"] = "What university did he attend?"
    (tmp_path / "zsre.json").write_text(json.dumps(zs))
    with pytest.raises(RequestValidationError) as e:
        read_requests(tmp_path / "zsre.json")
    assert problems_of(e) == ["row 1, subject: the subject 'Watts Humphrey' is absent from the question "
                              "'What university did he attend?'"]


@pytest.mark.parametrize("csv_text, expected", [
    ("subject,object\nA,b\n", ["file, columns: missing relation (or prompt) (found: subject, object)"]),
    ("name,relation,answer\nA,{} is,b\n", ["file, columns: missing subject, object (or target_new) "
                                           "(found: name, relation, answer)"]),
    ("subject,relation,object\n,{} is,b\nA,,b\nA,{} is,\n",
     ["row 1, subject: empty", "row 2, relation: empty (give a template with '{}' or a relation name)",
      "row 3, object: empty"]),
    ("subject,prompt,object\nA,plays the,b\n", ["row 1, prompt: 'plays the' has no '{}' for the subject and is "
                                                "not a known relation name (known: sport)"]),
    ("subject,prompt,object\nA,{} and {} play,b\n", ["row 1, prompt: '{} and {} play' has 2 '{}'; exactly "
                                                     "one is needed, for the subject"]),
    ("subject,prompt,object,paraphrase_prompts\nMiles,{} plays,b,He plays|Miles plays\n",
     ["row 1, paraphrase_prompts: the subject 'Miles' is absent from the filled prompt 'He plays'"]),
    ("subject,relation,object\nMiles,{} plays the sport of,chess\nOrla,sport,golf\nMiles,sport,golf\n",
     ["row 3, object: conflicts with row 1: 'Miles' under 'P641' cannot become both 'chess' and 'golf'"]),
    ("subject,relation,object\nA,{} is,b\nA,{} is,c\nA,{} is,d\n",
     ["row 2, object: conflicts with row 1: 'A' under '{} is' cannot become both 'b' and 'c'",
      "row 3, object: conflicts with row 1: 'A' under '{} is' cannot become both 'b' and 'd'"]),
    ("subject,relation,object,case_id\nA,{} is,b,x1\n", ["row 1, case_id: 'x1' is not an integer"]),
    ("subject,relation,object\n", ["file, file: no edit requests found"]),
])
def test_every_bad_row_is_reported_with_row_and_field(tmp_path, csv_text, expected):
    f = tmp_path / "e.csv"
    f.write_text(csv_text, encoding="utf-8")
    with pytest.raises(RequestValidationError) as e:
        read_requests(f, relations=RELATIONS)
    assert problems_of(e) == expected
    assert str(e.value).startswith(f"{len(expected)} problem")


def test_non_utf8_size_limit_empty_and_bad_json(tmp_path):
    f = tmp_path / "e.csv"
    f.write_bytes("subject,relation,object\nJosé,{} is,b\n".encode("latin-1"))
    with pytest.raises(RequestValidationError, match=r"not UTF-8 text \(invalid byte at offset 27\)"):
        read_requests(f)
    f.write_text("subject,relation,object\n" + "A,{} is,b\n" * 100)
    with pytest.raises(RequestValidationError, match="over the limit of 500 bytes"):
        read_requests(f, max_bytes=500)
    with pytest.raises(RequestValidationError, match="over the limit"):
        read_requests(b"x" * 501, max_bytes=500)
    f.write_text("   \n")
    with pytest.raises(RequestValidationError, match="empty: no edit requests"):
        read_requests(f)
    (tmp_path / "b.json").write_text("[{]")
    with pytest.raises(RequestValidationError, match="not valid JSON"):
        read_requests(tmp_path / "b.json")
    (tmp_path / "c.json").write_text('"just a string"')
    with pytest.raises(RequestValidationError, match="expected a JSON list"):
        read_requests(tmp_path / "c.json")
    with pytest.raises(Exception, match="unknown format 'xml'"):
        read_requests(f, fmt="xml")


def test_validate_drops_duplicates_with_warning_and_checks_tokens():
    tok = make_tokenizer()
    a = EditRequest("{} plays the", "Miles Davis", "chess")
    rep = validate_requests([a, EditRequest("{} works for", "Kara", "Toyota"), a], tok)
    assert rep.ok and rep.requests == [a, EditRequest("{} works for", "Kara", "Toyota")]
    assert rep.warnings == ["row 3 repeats row 1 (Miles Davis -> chess); dropped"]
    rep = validate_requests([a, EditRequest("{}", "", "x"), EditRequest("{} {}", "B", "y")], tok)
    assert [str(p) for p in rep.problems] == [
        "row 2, subject: empty", "row 3, prompt: '{} {}' must contain exactly one '{}' for the subject (found 2)"]
    rep = validate_requests([EditRequest("{} plays the", "Miles Davis", "chess")], tok, max_length=8)
    assert "too long for a model of 8 positions" in str(rep.problems[0])
    rep = validate_requests([], tok)
    assert str(rep.problems[0]) == "file, requests: no edit requests"
    with pytest.raises(RequestValidationError):
        rep.raise_if_bad()


def test_subject_inside_template_text_uses_the_placeholder_occurrence():
    tok = make_tokenizer()
    r = EditRequest("Paris and {} are", "Paris", "x")
    assert validate_requests([r], tok).ok


def test_rows_from_a_table_editor():
    reqs, probs = requests_from_rows([{"Subject": "A", "Prompt": "{} is", "Object": "b"},
                                      {"subject": "C", "prompt": "{} is", "object": ""}], RELATIONS)
    assert len(reqs) == 1 and [str(p) for p in probs] == ["row 2, object: empty"]
    reqs, probs = requests_from_rows(["not a dict"], RELATIONS)
    assert [str(p) for p in probs] == ["row 1, row: not an object with named fields"]


def test_dataset_loader_skips_bad_and_conflicting_records(tmp_path):
    def case(i, s, new):
        return {"case_id": i, "requested_rewrite": {"prompt": "{} plays", "relation_id": "P1", "subject": s,
                                                     "target_new": {"str": new}, "target_true": {"str": "t"}}}
    recs = [case(0, "A", "x"), case(1, "A", "y"), case(2, "", "z"), case(3, "B", "x"), case(4, "C", "x")]
    (tmp_path / "cf.json").write_text(json.dumps(recs))
    reqs, skipped = load_dataset_requests(tmp_path / "cf.json", 2)
    assert [r.case_id for r in reqs] == [0, 3]
    assert [str(p) for p in skipped] == ["row 2, object: same subject and relation as row 1; skipped",
                                         "row 3, subject: empty"]


# ---- values of the wrong type, stray fields, control characters: refused, never made into text ----

@pytest.mark.parametrize("rows, expected", [
    ([{"subject": "Greta", "prompt": "{} was born in", "target_new": ["Kelwick"]}],
     ["row 1, object: expected text, got a list"]),
    ([{"subject": {"name": "Greta"}, "prompt": "{} was born in", "target_new": "Kelwick"}],
     ["row 1, subject: expected text, got an object"]),
    ([{"subject": "Greta", "prompt": "{} was born in", "target_new": "Kelwick"},
      {"subject": 123, "prompt": "{} was born in", "target_new": "Kelwick"}],
     ["row 2, subject: expected text, got the number 123 (write it in quotes)"]),
    ([{"subject": "Greta", "prompt": "{} was born in", "target_new": "Kelwick", "true_object": 7}],
     ["row 1, true_object: expected text, got the number 7 (write it in quotes)"]),
    ([{"subject": "Greta", "prompt": "{} was born in", "target_new": "Kel\u0000wick"}],
     ["row 1, object: contains the control character U+0000; remove it"]),
    ([{"subject": "Greta", "prompt": "{} was born in", "target_new": "Kelwick",
       "paraphrase_prompts": ["Greta was born in", ["Greta"]]}],
     ["row 1, paraphrase_prompts: item 2: expected text, got a list"]),
])
def test_json_values_of_the_wrong_type_are_refused_with_row_and_field(tmp_path, rows, expected):
    (tmp_path / "e.json").write_text(json.dumps(rows))
    with pytest.raises(RequestValidationError) as e:
        read_requests(tmp_path / "e.json")
    assert problems_of(e) == expected


def test_csv_extra_fields_and_control_characters_are_refused(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("subject,relation,object\nGreta,{} was born in,Kelwick\nGreta Paul,{} lives in,Kelwick,extra\n")
    with pytest.raises(RequestValidationError) as e:
        read_requests(f)
    assert problems_of(e) == ["row 2, row: 1 field(s) more than the header's 3 columns ('extra'); "
                              "put quotes around a value that contains a comma"]
    f.write_text("subject,relation,object\nGreta,{} was born in,Kelwick,\n")       # a trailing empty field
    assert read_requests(f)[0].target_new == "Kelwick"
    f.write_bytes(b"subject,relation,object\nGreta,{} was born in,Kelwick\x00\nAnna,{} lives in,\"Ost\nmont\"\n")
    with pytest.raises(RequestValidationError) as e:
        read_requests(f)
    assert problems_of(e) == ["row 1, object: contains the control character U+0000; remove it",
                              "row 2, object: contains the control character U+000A; remove it"]


def test_counterfact_target_that_is_not_text_is_refused(tmp_path):
    rec = {"case_id": 0, "requested_rewrite": {"prompt": "{} plays", "relation_id": "P1", "subject": "A",
                                               "target_new": {"str": ["x"]}, "target_true": {"str": "t"}}}
    (tmp_path / "cf.json").write_text(json.dumps([rec]))
    with pytest.raises(RequestValidationError) as e:
        read_requests(tmp_path / "cf.json")
    assert problems_of(e) == ["row 1, object: expected text, got a list"]


def test_validate_refuses_control_characters_in_requests_built_in_code():
    rep = validate_requests([EditRequest("{} plays the", "Miles\tDavis", "chess")], make_tokenizer())
    assert [str(p) for p in rep.problems] == ["row 1, subject: contains the control character U+0009; remove it"]


# ---- a double quote left open: named with its row and line, the rows after it still checked -----

OPEN_QUOTE_ADVICE = "close the quote or remove it"


@pytest.mark.parametrize("csv_text, expected", [
    # runs to the end of the file, swallowing two rows; their own problems are still listed
    ("subject,relation,object\nMiles Davis,{} plays the,\"trumpet\nNext Subject,{} works as a,\nThird,,y\n",
     ["row 1, object: the double quote that opens this value on line 2 (\"trumpet) is never closed, so "
      f"lines 3–4 were read into it; {OPEN_QUOTE_ADVICE}",
      "row 2, object: empty",
      "row 3, relation: empty (give a template with '{}' or a relation name)"]),
    # closed by the next row's own opening quote: one row swallowed, the rows after it are fine
    ("subject,relation,object\nMiles Davis,{} plays the,\"trumpet\nNext Subject,{} works as a,\"poet\"\n"
     "Third,{} is,y\n",
     ["row 1, object: the double quote that opens this value on line 2 (\"trumpet) is not closed on that "
      f"line, so line 3 was read into it; {OPEN_QUOTE_ADVICE}"]),
    # on the last line, with no line break after it
    ("subject,relation,object\nA,{} is,b\nAnna,{} lives in,\"Ostmont",
     [f"row 2, object: the double quote that opens this value on line 3 (\"Ostmont) is never closed; "
      f"{OPEN_QUOTE_ADVICE}"]),
    # in the relation column, after a blank line: the line is the file's, the row the record's
    ("subject,prompt,object,true_object\nA,{} is,b,c\n\nB,\"{} lives in,Ostmont\nC,{} is,d,e\n",
     ["row 2, prompt: the double quote that opens this value on line 4 (\"{} lives in,Ostmont) is never "
      f"closed, so line 5 was read into it; {OPEN_QUOTE_ADVICE}"]),
    # two of them: each reported, reading goes on after each
    ("subject,relation,object\nA,\"{} is,b\nB,{} is,\"c\nC,{} is,d\n",
     ["row 1, relation: the double quote that opens this value on line 2 (\"{} is,b) is not closed on that "
      f"line, so line 3 was read into it; {OPEN_QUOTE_ADVICE}",
      "row 2, object: the double quote that opens this value on line 3 (\"c) is never closed, so line 4 "
      f"was read into it; {OPEN_QUOTE_ADVICE}"]),
    # in the header
    ("subject,relation,\"object\nA,{} is,b\n",
     ["file, header: the double quote that opens this value on line 1 (\"object) is never closed, so "
      f"line 2 was read into it; {OPEN_QUOTE_ADVICE}"]),
])
def test_an_unclosed_quote_names_its_row_and_line_and_the_other_rows_are_still_checked(tmp_path, csv_text,
                                                                                        expected):
    f = tmp_path / "e.csv"
    f.write_text(csv_text, encoding="utf-8")
    with pytest.raises(RequestValidationError) as e:
        read_requests(f, relations=RELATIONS)
    assert problems_of(e) == expected


def test_quotes_that_close_are_read_as_before(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text('subject,relation,object\n"Davis, Miles",{} plays the,"chess"\nA,{} is,5\'10" tall\n')
    reqs = read_requests(f)
    assert [(r.subject, r.target_new) for r in reqs] == [("Davis, Miles", "chess"), ("A", "5'10\" tall")]
    f.write_text('subject,relation,object\nAnna,{} lives in,"Ost\nmont"\nB,{} is,c\n')   # closed, one value
    with pytest.raises(RequestValidationError) as e:
        read_requests(f)
    assert problems_of(e) == ["row 1, object: contains the control character U+000A; remove it"]


# ---- the new object is the true one: kept, with a warning ----------------------------------------

def test_new_object_equal_to_the_true_one_is_kept_with_a_warning():
    tok = make_tokenizer()
    same = EditRequest("{} plays the", "Miles Davis", "trumpet", "trumpet")
    spaced = EditRequest("{} works for", "Kara", " Toyota", "Toyota ")       # tokenised alike
    other_case = EditRequest("{} lives in", "Orla", "paris", "Paris")
    rep = validate_requests([other_case, same, spaced, same], tok)
    assert rep.ok and rep.requests == [other_case, same, spaced]
    assert rep.warnings == [
        "row 2: the new object 'trumpet' is the true object already, so this edit changes no fact (it only "
        "makes the model surer of 'trumpet'; ES, PS and NS, which compare the new object with the true "
        "one, are not computed for it); kept",
        "row 3: the new object 'Toyota' is the true object already, so this edit changes no fact (it only "
        "makes the model surer of 'Toyota'; ES, PS and NS, which compare the new object with the true "
        "one, are not computed for it); kept",
        "row 4 repeats row 2 (Miles Davis -> trumpet); dropped"]


def test_rows_can_carry_the_numbers_the_user_sees():
    rows = [{"subject": "A", "prompt": "{} is", "object": "b"}, {"subject": "A", "prompt": "{} is", "object": "c"},
            {"subject": "B", "prompt": "{} is", "object": ""}]
    _, probs = requests_from_rows(rows, RELATIONS, numbers=[2, 5, 7])
    assert [str(p) for p in probs] == ["row 7, object: empty",
                                       "row 5, object: conflicts with row 2: 'A' under '{} is' cannot become "
                                       "both 'b' and 'c'"]
    a = EditRequest("{} is", "A", "b", "b")
    rep = validate_requests([a, a], make_tokenizer(), numbers=[3, 9])
    assert rep.warnings[0].startswith("row 3: the new object 'b' is the true object already")
    assert rep.warnings[1] == "row 9 repeats row 3 (A -> b); dropped"
    with pytest.raises(ValueError, match="1 row numbers for 2 rows"):
        validate_requests([a, a], numbers=[1])


def test_the_cli_prints_the_same_object_warning_and_edits_the_row(setup, capsys):
    from tests.memit_helpers import GOOD_CSV
    from workbench.cli import main

    _, opts, tmp = setup
    (tmp / "e.csv").write_text(GOOD_CSV + "Kara Selwyn,{} works for,Toyota, Toyota\n")
    assert main(["edit", str(tmp / "e.csv"), *opts, "--json", str(tmp / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "warning: row 3: the new object 'Toyota' is the true object already, so this edit changes no fact" in out
    assert "edited 3 facts" in out and json.loads((tmp / "r.json").read_text())["n"] == 3
