"""The accounting identity can fail: duplicates are counted from the parsed rows (not derived from the
other terms), and the rows written to the nodes table are checked against ``nodes_out``."""

from __future__ import annotations

import pytest

from g2i_core.ingest.job import IngestReport


def _report(mode: str = "full", **over) -> IngestReport:
    values = {"lines_in": 10, "nodes_out": 7, "duplicates": 1, "quarantined": 2} | over
    return IngestReport("goodreads-2026-11-26", "goodreads", mode, **values)


def test_written_node_rows_that_disagree_with_nodes_out_fail_the_check():
    from g2i_core.ingest.job import check_written

    report = _report()
    report.check_identity()
    check_written(report, 7)
    with pytest.raises(RuntimeError, match="wrote 6 node rows, expected nodes_out=7"):
        check_written(report, 6)
    with pytest.raises(RuntimeError, match="wrote 8 node rows"):  # a duplicate that survived dedupe
        check_written(report, 8)
    with pytest.raises(RuntimeError, match="accounting broken"):  # and check_identity itself now fails
        report.check_identity()


def test_delta_mode_checks_the_deltas_nodes_plus_the_carried_base_rows():
    from g2i_core.ingest.job import check_written

    report = _report("delta")
    check_written(report, 107, carried_nodes=100)  # 100 base rows kept + the delta's own 7
    with pytest.raises(RuntimeError, match="carried_nodes=100"):
        check_written(report, 105, carried_nodes=100)


@pytest.mark.spark
def test_duplicates_are_counted_from_the_parsed_rows(spark):
    from g2i_core.ingest.job import PARSED_SCHEMA, _count_outcomes

    def row(line_no, node_id=None, reason=None):
        return ("u", line_no, node_id, None, None, None, None, None, None, None, [], reason, None, None)

    rows = [row(1, "g:a"), row(2, "g:a"), row(3, "g:a"), row(4, "g:b"), row(5, "g:c"),
            row(6, reason="parse_error"), row(7, reason="bad_field"), row(8, reason="bad_field")]
    outcomes = _count_outcomes(spark.createDataFrame(rows, PARSED_SCHEMA))
    assert (outcomes.lines, outcomes.ok_rows, outcomes.distinct_nodes) == (8, 5, 3)
    assert (outcomes.duplicates, outcomes.quarantined) == (2, 3)
    assert outcomes.reasons == {"bad_field": 2, "parse_error": 1}
    # counted on its own: a chunker that lost a line no longer hides in a derived duplicates term
    report = IngestReport("r", "goodreads", "full", 9, outcomes.distinct_nodes, outcomes.duplicates,
                          outcomes.quarantined)
    with pytest.raises(RuntimeError, match="lines_in=9 != nodes_out=3 \\+ duplicates=2 \\+ quarantined=3"):
        report.check_identity()
