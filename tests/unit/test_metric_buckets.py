"""The histograms' buckets reach what they measure at the configuration's defaults: a sample
past the largest finite bucket is only counted in ``+Inf``, and ``histogram_quantile`` then
answers that bucket's bound (a p99 flush "2.5 s" that took 20)."""

from __future__ import annotations

from mailerd import config, metrics


def _largest_bucket(histogram: metrics.Histogram) -> float:
    return max(b for b in histogram._upper_bounds if b != float("inf"))


def test_a_writer_flush_of_a_full_buffer_fits_the_buckets() -> None:
    """After an outage the writer flushes its whole buffer at once, in one transaction whose
    statements may each take up to the command timeout."""
    assert _largest_bucket(metrics.FLUSH_ROWS) >= config.WriterConfig().max_buffer_rows
    assert _largest_bucket(metrics.FLUSH_SECONDS) >= config.DatabaseConfig().command_timeout_s


def test_a_provider_call_up_to_its_timeout_fits_the_buckets() -> None:
    assert _largest_bucket(metrics.PROVIDER_CALLS) >= config.ProviderConfig().timeout_s
