import math

import pandas as pd

from mtilib.tables import markdown_table


def test_markdown_table_from_dicts_and_dataframe():
    rows = [{"net": "mtinet", "dice": 0.81234, "ok": True}, {"net": "a|b", "dice": math.nan, "ok": False}]
    text = markdown_table(rows)
    assert text.splitlines() == [
        "| net | dice | ok |",
        "|---|---|---|",
        "| mtinet | 0.812 | yes |",
        "| a\\|b | – | no |",
    ]
    assert markdown_table(pd.DataFrame(rows), columns=["dice"], floatfmt=".1f").splitlines()[2] == "| 0.8 |"
