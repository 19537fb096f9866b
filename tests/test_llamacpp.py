import json

import pytest

from rmkit.llamacpp import sample_llamacpp


def test_samples_are_seeded_per_index_and_a_cache_is_extended_not_redrawn(tmp_path):
    """Two samples per prompt, then three: the first two are reused as they are (one line per prompt appended),
    only the third is drawn; a fresh cache drawn at three gives the same three (each sample has its own seed)."""
    prompts = [[{"role": "user", "content": "Name a fruit."}], [{"role": "user", "content": "Say hello."}]]
    ids = ["a", "b"]
    out = tmp_path / "samples.jsonl"
    kw = dict(max_tokens=6, temperature=1.0, threads=2, parallel=1)  # one at a time: no batch-mates to move logits
    two = sample_llamacpp(prompts, 2, out=out, ids=ids, **kw)["samples"]
    assert {i: len(v) for i, v in two.items()} == {"a": 2, "b": 2}
    three = sample_llamacpp(prompts, 3, out=out, ids=ids, **kw)["samples"]
    assert all(three[i][:2] == two[i] for i in ids) and all(len(three[i]) == 3 for i in ids)
    assert len(out.read_text().splitlines()) == 4 and json.loads(out.read_text().splitlines()[-1])["id"] == "b"
    again = sample_llamacpp(prompts, 2, out=out, ids=ids, **kw)
    assert again["tokens_per_s"] is None and again["samples"] == {i: three[i][:2] for i in ids}  # nothing drawn
    fresh = sample_llamacpp(prompts, 3, out=tmp_path / "fresh.jsonl", ids=ids, **kw)["samples"]
    assert fresh == three
    with pytest.raises(ValueError, match=r"other settings \(max_tokens: 6 then, 7 now\)"):  # before any server
        sample_llamacpp(prompts, 3, out=out, ids=ids, **{**kw, "max_tokens": 7})
    out.with_name(out.name + ".settings.json").unlink()  # a cache from before settings were kept: not trusted
    with pytest.raises(ValueError, match=r"no record of their settings.*write that to"):
        sample_llamacpp(prompts, 3, out=out, ids=ids, **kw)
