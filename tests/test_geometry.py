"""The calibrated instrument tables: dead pixels and vignetting (reading, bad input, use)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_instrument

from xmmsr.errors import InputError
from xmmsr.instrument.geometry import read_dead_pixels
from xmmsr.instrument.model import Vignetting


def test_dead_pixel_table_is_read_and_bad_tables_name_file_and_line(tmp_path):
    good = tmp_path / "dead.csv"
    good.write_text("# a comment\nrow_min,row_max,col_min,col_max,kind\n0,2,0,402,row\n5,5,7,8,pixel\n")
    assert read_dead_pixels(good) == ((0, 2, 0, 402), (5, 5, 7, 8))
    inst = make_instrument(geometry={"dead_pixels_file": str(good)})
    dead = inst.geometry.dead_map()
    assert dead.sum() == 3 * 403 + 2 and dead[5, 7] == dead[5, 8] == 1 and dead[5, 9] == 0
    assert inst.geometry.detector_mask(1)[5, 7] == 0

    bad = tmp_path / "bad.csv"
    bad.write_text("row_min,row_max,col_min,col_max\n3,1,0,0\n")
    with pytest.raises(InputError, match=r"bad\.csv.*line 2"):
        read_dead_pixels(bad)
    bad.write_text("rows,cols\n1,2\n")
    with pytest.raises(InputError, match=r"bad\.csv.*header"):
        read_dead_pixels(bad)
    with pytest.raises(InputError, match=r"missing\.csv"):
        read_dead_pixels(tmp_path / "missing.csv")


def test_vignetting_table_interpolates_in_angle_and_energy_and_rejects_bad_tables(tmp_path):
    table = tmp_path / "vig.csv"
    table.write_text("# test\ntheta_arcmin,v_1.0keV,v_2.0keV\n0,1.0,1.0\n10,0.5,0.3\n")
    v = Vignetting.from_file(table)
    assert float(v(5.0, 1.0)) == pytest.approx(0.75) and float(v(5.0, 2.0)) == pytest.approx(0.65)
    assert float(v(5.0, 1.5)) == pytest.approx(0.70) and float(v(20.0, 1.0)) == pytest.approx(0.5)
    per_photon = v(np.array([5.0, 5.0], dtype=np.float32), np.array([1.0, 2.0], dtype=np.float32))
    assert per_photon.dtype == np.float32 and np.allclose(per_photon, [0.75, 0.65])
    table.write_text("theta_arcmin,v_1.0keV\n0,1.0\n10,1.5\n")
    with pytest.raises(InputError, match=r"vig\.csv.*factors in \[0, 1\]"):
        Vignetting.from_file(table)
