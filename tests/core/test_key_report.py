"""pomp_core.key_report.KeyReport, the one report of both checkpoint converters (Detic: one
key to one; ZSSeg: one to several, filled keys, set-aside reasons counted)."""
from pomp_core.key_report import KeyReport


def test_one_to_one_summary_and_ok():
    r = KeyReport(mapped={"a": "x", "b": "y", "c": "z"}, set_aside={"s": "why"}, unexpected=["u"],
                  missing=["m1", "m2"], wrong_shape=[("w", (2, 3), (3, 2))])
    assert r.summary().splitlines() == [
        "3 mapped, 1 set aside, 1 unexpected, 2 missing, 1 of another shape",
        "  unexpected: u", "  missing: m1", "  missing: m2", "  shape: w (2, 3) -> ours (3, 2)"]
    assert not r.ok and r.targets() == ["x", "y", "z"]
    for bad in (dict(unexpected=["u"]), dict(missing=["m"]), dict(wrong_shape=[("w", (1,), (2,))])):
        assert not KeyReport(**bad).ok
    assert KeyReport(mapped={"a": "x"}, set_aside={"s": "why"}, filled={"f": "0"}).ok


def test_one_to_many_summary_counts_targets_filled_keys_and_reasons():
    r = KeyReport(mapped={"a": ["x1", "x2", "x3"], "b": ["y"]}, set_aside={"s1": "logit scale", "s2": "head",
                                                                          "s3": "logit scale"},
                  filled={"f1": "ones", "f2": "zeros"}, missing=["m"], one_to_many=True)
    assert r.summary().splitlines() == [
        "2 mapped (to 4 of ours), 3 set aside, 2 filled, 0 unexpected, 1 missing, 0 of another shape",
        "  set aside (2): logit scale", "  set aside (1): head", "  missing: m"]
    assert r.targets() == ["x1", "x2", "x3", "y"] and not r.ok


def test_both_converters_use_the_one_class():
    from tests.frameworks import require

    require("detectron2")
    require("mmseg.models")
    import pomp_det.detic_checkpoint as det
    import pomp_seg.zsseg_checkpoint as seg

    assert det.KeyReport is seg.KeyReport is KeyReport
