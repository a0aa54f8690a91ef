"""`cellctl ctl status` shows what a restart after an unclean stop found."""

from __future__ import annotations

from cellctl.cli.ctl import format_status
from cellctl.engine.engine import RecoveryView
from cellctl.engine.recovery import InterruptedChangeover, RecoveredStep, StepState


def test_status_prints_the_interrupted_changeover_and_the_jobs_not_restored() -> None:
    view = RecoveryView(
        unclean=True,
        last_state="Execute",
        changeover=InterruptedChangeover(
            changeover_id="C1",
            job_id="J1",
            from_variant="oslo",
            to_variant="bergen",
            started_at=1.0,
            steps=(
                RecoveredStep("toolchanger:tool_change", StepState.IN_DOUBT),
                RecoveredStep("fixture:fixture_unclamp", StepState.DONE),
                RecoveredStep("stapler:setpoints", StepState.NOT_STARTED),
            ),
        ),
        restored_jobs=("J1",),
        refused_jobs=(("J2", "recipe 'oslo' changed since the job was queued"),),
    )
    text = format_status({"state": "Stopped", "state_no": 2, "recovery": view.to_dict()})
    assert "recovery  after an unclean stop (last state Execute)" in text
    assert "changeover C1 of job J1 -> bergen: 1 done, 1 in doubt, 1 not started" in text
    assert "toolchanger:tool_change: in doubt" in text
    assert "job J2 not restored: recipe 'oslo' changed since the job was queued" in text
