"""What each key means (launch/keys.py): conf/README.md's key table is the schema's."""

from __future__ import annotations

from helpers import ROOT

from fragment_llm.launch.keys import key_table


def test_the_conf_readme_key_table_is_the_schemas():
    """conf/README.md's key table is made from the schema and conf/: regenerate it after changing either."""
    readme = (ROOT / "conf" / "README.md").read_text(encoding="utf-8")
    assert key_table() in readme, (
        "conf/README.md's key table differs from the schema; paste the output of "
        "python -c 'from fragment_llm.launch.keys import key_table; print(key_table())'"
    )
