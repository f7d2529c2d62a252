"""The statements table (experiment.statements): grouping of verdicts, the worst point
within a statement's assumptions, and the JSON records."""

import json
import math

from signvote.experiment import statements
from signvote.theory.as_printed import verdict


def _verdicts():
    return [
        verdict("A", "src", "case 1", [({"S": 1.0}, 0.5, 1.0), ({"S": 2.0}, 0.3, 0.2)]),
        verdict("A", "src", "case 2", [({"S": 1.0}, 0.1, 1.0)]),
        verdict("A", "src", "case 3", [({"S": 3.0}, 9.0, 1.0)], assumptions_hold=False),
        verdict("B", "ours", "case 1", [({"M": 5}, 0.2, math.inf), ({"M": 7}, 0.2, 0.4)]),
    ]


def test_statements_are_grouped_with_failures_split_by_assumptions():
    a, b = statements.summarise(_verdicts())
    assert (a["statement"], a["cases"], a["within"], a["points"]) == ("A", 3, 2, 4)
    assert a["failed_within"] == ["case 1"] and a["failed_outside"] == ["case 3"]
    # the worst point is taken within the assumptions: 0.3 / 0.2, not case 3's 9
    assert a["worst_case"] == "case 1" and a["ratio"] == 0.3 / 0.2
    assert a["worst"] == {"S": 2.0, "lhs": 0.3, "rhs": 0.2}
    assert b["failed_within"] == [] and b["ratio"] == 0.5 and b["worst"]["M"] == 7


def test_the_table_says_no_where_a_statement_fails_within_its_assumptions():
    lines = statements.table(_verdicts())
    assert lines[2].startswith("| A | src | NO: 1 of 2 cases within its assumptions, of 3 |")
    assert "case 1 (and outside them: case 3)" in lines[2] and "| 1.5 |" in lines[2]
    assert lines[3].startswith("| B | ours | yes: 1 case |")


def test_records_are_json_with_infinities_as_strings():
    text = json.dumps(statements.records(_verdicts()), allow_nan=False)
    back = json.loads(text)
    assert back[0]["holds"] is False and back[1]["holds"] is True
    assert back[0]["worst"] == {"S": 2.0, "lhs": 0.3, "rhs": 0.2}
    assert back[3]["points"] == 2
