"""CLM_PROFILE's arithmetic: the GPU's busy time is the union of its kernels' intervals, kernels are sorted into
kinds by name, and a bad value is refused with the form to use."""

import pytest

from clmkit import profiling


def test_busy_time_counts_overlapping_kernels_once():
    # two streams overlapping on 5-8, a gap 12-20
    assert profiling.busy_time_us([(0, 8), (5, 12), (20, 25), (21, 22)]) == 17


def test_kernels_are_sorted_into_kinds_by_name():
    assert profiling.kind_of("nvjet_sm90_tst_192x192_64x3_1x2_h_bz_coopB_bias_NNN") == "matrix multiplication"
    assert profiling.kind_of("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16") == "attention"
    assert profiling.kind_of("triton_poi_fused_add_native_layer_norm_3").startswith("Triton")
    assert profiling.kind_of("Memcpy HtoD (Pinned -> Device)") == "copies and fills"
    assert profiling.kind_of("void at::native::vectorized_elementwise_kernel<8>") == profiling.OTHER


@pytest.mark.parametrize("value, steps", [("6-8", (6, 8)), ("5", (5, 5)), ("", None)])
def test_the_steps_asked_for(monkeypatch, value, steps):
    monkeypatch.setenv(profiling.VARIABLE, value)
    assert profiling.asked_steps() == steps


@pytest.mark.parametrize("value", ["x", "8-6", "0-2", "3-"])
def test_a_bad_value_names_the_form(monkeypatch, value):
    monkeypatch.setenv(profiling.VARIABLE, value)
    with pytest.raises(ValueError, match="A-B"):
        profiling.asked_steps()
