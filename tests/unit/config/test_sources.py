"""A mixture's sources (config/sources.py): data=mix composed as a user writes it, each source named and
made settings of its own, and a bad entry one line naming its index and key."""

from __future__ import annotations

import re
import shutil

import pytest
from helpers import ROOT, settings_for

from fragment_llm.config.schema import ConfigError, DataConfig, DataSource
from fragment_llm.config.sources import data_sources, mixture_sources
from fragment_llm.launch import conf
from fragment_llm.launch.compose import check_overrides


def test_conf_data_mix_is_the_bundled_corpora_half_and_half():
    settings = settings_for(["data=mix"])
    assert settings.data.source is DataSource.mix
    sources = mixture_sources(settings.data)
    assert [(source.name, source.share, source.data.source) for source in sources] == [
        ("pydoc", 0.5, DataSource.pydoc),
        ("stdlib", 0.5, DataSource.stdlib),
    ]


def test_the_command_lines_list_is_a_source_each_named_and_weighted():
    sources_override = (
        "data.sources=[{path:books/stories.txt,weight:3},{source:pydoc},"
        "{path:more/stories.txt,weight:1.5,text_field:body},{source:hf,name:owner/tiny,split:validation,weight:0.5}]"
    )
    settings = settings_for(["data=mix", sources_override, "data.val_fraction=0.2", "data.skip_bad_records=true"])
    sources = mixture_sources(settings.data)
    # path alone is a text source; a file is named by its file name, a repeated name made unique; weight 1 by default
    assert [source.name for source in sources] == ["stories.txt", "pydoc", "stories.txt-2", "owner/tiny"]
    assert [source.share for source in sources] == [0.5, 1 / 6, 0.25, 1 / 12]
    first, _, third, hub = (source.data for source in sources)
    assert first == DataConfig(
        source=DataSource.text,
        path="books/stories.txt",
        text_field="text",
        skip_bad_records=True,
        val_fraction=0.2,
    )
    assert third.text_field == "body" and third.val_fraction == 0.2  # each source its own split of 0.2
    assert (hub.source, hub.name, hub.split) == (DataSource.hf, "owner/tiny", "validation")


def test_a_single_corpus_is_one_source_with_all_the_weight():
    (source,) = data_sources(settings_for(["data=text", "data.path=books/novel.txt"]).data)
    assert (source.name, source.share, source.data.path) == ("novel.txt", 1.0, "books/novel.txt")
    assert [source.name for source in data_sources(settings_for([]).data)] == ["pydoc"]


@pytest.mark.parametrize(
    "sources,message",
    [
        ("[]", "data.sources is empty; data=mix needs a list of sources, e.g. data.sources=["),
        ("[{path:a.txt,wieght:2}]", "data.sources[0].wieght is not a key of a source; did you mean weight?"),
        ("[{source:pydoc},{path:a.txt,weight:-1}]", "data.sources[1].weight=-1 is not a finite number > 0"),
        ("[{path:a.txt,weight:0}]", "data.sources[0].weight=0 is not a finite number > 0"),
        ("[{path:a.txt,weight:nan}]", "data.sources[0].weight=nan is not a finite number > 0"),
        ("[{path:a.txt,weight:inf}]", "data.sources[0].weight=inf is not a finite number > 0"),
        ("[{path:a.txt,weight:heavy}]", "data.sources[0].weight=heavy is not a finite number > 0"),
        ("[{path:a.txt,weight:true}]", "data.sources[0].weight=True is not a finite number > 0"),
        ("[{source:mix}]", "data.sources[0].source=mix is not a corpus a mixture can draw from; choose one of"),
        ("[{source:books}]", "data.sources[0].source=books is not a corpus a mixture can draw from"),
        ("[{weight:2}]", "data.sources[0] names no corpus; give it source:NAME (pydoc, text, stdlib, hf) or path:FILE"),
        ("[{source:text}]", "data.sources[0] is source=text without a path; give it path:PATH"),
        ("[{source:hf}]", "data.sources[0] is source=hf without a name; give it name:NAME"),
        ("[{source:pydoc,path:a.txt}]", "data.sources[0].path=a.txt: source=pydoc reads no path; drop it"),
        ("[pydoc]", "data.sources[0]=pydoc is not a source; write each source as {source:pydoc,weight:1}"),
    ],
)
def test_a_bad_source_is_one_line_naming_its_index_key_and_fix(sources, message):
    with pytest.raises(ConfigError) as raised:
        settings_for(["data=mix", f"data.sources={sources}"])
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_sources_belong_to_data_mix_and_a_mixture_takes_no_single_path():
    with pytest.raises(ConfigError, match=r"^data.sources is set but data.source=pydoc; use data=mix"):
        settings_for(["+data.sources=[{source:pydoc}]"])
    with pytest.raises(ConfigError, match=r"^data.path=a.txt reads one corpus; with data=mix give each source"):
        settings_for(["data=mix", "+data.path=a.txt"])


def test_a_mixture_of_ones_own_in_conf_data_composes_as_the_readme_writes_it(tmp_path, monkeypatch):
    readme = (ROOT / "fragment_llm" / "data" / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n# conf/data/my_mix.yaml\n(.*?)```", readme, re.S).group(1)
    conf_dir = tmp_path / "conf"
    shutil.copytree(conf.CONF_DIR, conf_dir)
    (conf_dir / "data" / "my_mix.yaml").write_text(example, encoding="utf-8")
    monkeypatch.setattr(conf, "CONF_DIR", conf_dir)
    check_overrides(["data=my_mix"])  # run.py's check of the command line: my_mix is an option of data
    sources = mixture_sources(settings_for(["data=my_mix"]).data)
    assert [(source.name, source.share) for source in sources] == [("stories.jsonl.zst", 0.75), ("pydoc", 0.25)]
