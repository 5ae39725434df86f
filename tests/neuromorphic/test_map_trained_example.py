"""Smoke test of neuromorphic/examples/map_trained.py in --quick mode (train briefly, map on 3 chips)."""
from evrtrl.neuromorphic.examples import map_trained


def test_map_trained_quick(capsys):
    reports = map_trained.main(["--quick"])
    assert set(reports) == set(map_trained.TARGETS)
    for name, rep in reports.items():
        s = rep.simulation
        assert s is not None and s.acc_float is not None and s.acc_quant is not None and s.loss_float is not None
    # Xylo's bit-shift decay must show up as drift; SpiNNaker 2 keeps float decays
    assert any(w.parameter == "alpha_mem" for w in reports["xylo_audio2"].warnings)
    assert not any(w.parameter.startswith("alpha") for w in reports["spinnaker2"].warnings)
    out = capsys.readouterr().out
    assert out.count("Mapping onto") == 3 and "accuracy" in out
