"""GRPO over a Ray fleet: rollout, verifier and learner actors (`actors`), their supervision
(`supervisor`), the learner's ranks acting as one (`learner_group`) and the step loop in sync or async mode (`scheduler.Fleet`). Nothing here starts
Ray at import: `ray.init` happens inside `with Fleet(...)`."""

from prover.fleet.actors import Learner, LearnerWorker, RolloutWorker, VerifierWorker
from prover.fleet.learner_group import LearnerGroup
from prover.fleet.scheduler import Fleet, RolloutBatch, StepReport, StepTimes, fresh
from prover.fleet.supervisor import ActorPool, FleetError

__all__ = ["ActorPool", "Fleet", "FleetError", "Learner", "LearnerGroup", "LearnerWorker", "RolloutBatch", "RolloutWorker",
           "StepReport", "StepTimes", "VerifierWorker", "fresh"]
