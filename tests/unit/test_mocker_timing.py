"""The mocker's timing model against its formulas."""

from __future__ import annotations

import pytest

from dynamo_cli.config.models import MockerConfig
from dynamo_cli.engines.mocker.timing import TimingModel, decode_ms, prefill_ms


def test_prefill_follows_the_quadratic() -> None:
    coeffs = (4.21e-7, 0.01518, 16.5)
    assert prefill_ms(1000, coeffs) == pytest.approx(4.21e-7 * 1e6 + 15.18 + 16.5)
    assert prefill_ms(0, coeffs) == pytest.approx(16.5)
    assert prefill_ms(8192, (1.0, 2.0, 3.0)) == pytest.approx(8192**2 + 2 * 8192 + 3)


def test_decode_follows_the_quadratic_with_a_floor() -> None:
    coeffs = (-25.74, 54.01, 5.74)
    assert decode_ms(0.0, coeffs) == pytest.approx(5.74)
    assert decode_ms(0.5, coeffs) == pytest.approx(-25.74 * 0.25 + 54.01 * 0.5 + 5.74)
    assert decode_ms(1.0, coeffs) == pytest.approx(-25.74 + 54.01 + 5.74)
    assert decode_ms(0.3, (0.0, 0.0, 0.2)) == 1.0  # floored at 1 ms
    assert decode_ms(0.3, (0.0, 0.0, 0.2), 4.0) == 0.25  # floor applies before the speedup


def test_speedup_divides_everything() -> None:
    slow = TimingModel.from_config(MockerConfig())
    fast = TimingModel.from_config(MockerConfig(speedup_ratio=10.0))
    assert fast.prefill_ms(777) == pytest.approx(slow.prefill_ms(777) / 10)
    assert fast.decode_ms(0.42) == pytest.approx(slow.decode_ms(0.42) / 10)
    assert fast.step_ms(100, 3, 0.2) == pytest.approx(slow.step_ms(100, 3, 0.2) / 10)


def test_step_adds_parts_only_when_present() -> None:
    m = TimingModel(prefill=(0.0, 1.0, 10.0), decode=(0.0, 100.0, 2.0), speedup_ratio=2.0)
    assert m.step_ms(0, 0, 0.5) == 0.0
    assert m.step_ms(50, 0, 0.5) == pytest.approx((50 + 10) / 2)
    assert m.step_ms(0, 7, 0.5) == pytest.approx((50 + 2) / 2)
    assert m.step_ms(50, 7, 0.5) == pytest.approx((60 + 52) / 2)


def test_model_uses_config_coefficients() -> None:
    cfg = MockerConfig(prefill_ms=(1.0, 0.0, 0.0), decode_ms=(0.0, 0.0, 9.0), speedup_ratio=3.0)
    m = TimingModel.from_config(cfg)
    assert m.prefill_ms(6) == pytest.approx(12.0)
    assert m.decode_ms(0.9) == pytest.approx(3.0)
