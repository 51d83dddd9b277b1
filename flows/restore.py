"""The last step of moving a clinic, run on the machine it moves to: ``clinic-restore``.

``relay clinic move CLINIC --to MACHINE`` starts a run of this flow's deployment (one per work
pool, ``clinic-restore/<pool>``, deployed by ``relay deploy``, on demand) on the target machine's
work queue, ``machine-<name>``, so the worker there restores the database without anyone logging
in to that machine. It calls the same code as ``relay clinic restore``
(``tasks.homerestore.restore_home``, under the clinic's claim lock):
it refuses on any machine but the move's target, and running it twice changes nothing.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.config import load_clinic
from tasks.home import backup_dir
from tasks.homerestore import restore_home
from tasks.warehouse import data_out_of_errors


@flow(name="clinic-restore", flow_run_name="restore-{clinic}")
def clinic_restore(clinic: str) -> dict:
    """Restore the moved clinic's backup on this machine (generation + 1), make it the home,
    resume the clinic's deployments. Fails, saying why, on any machine but the move's target."""
    with data_out_of_errors():
        logger = get_run_logger()
        home = restore_home(load_clinic(clinic), backup_root=backup_dir(), echo=logger.info)
        return {"clinic": clinic, "machine": home.machine, "generation": home.generation}
