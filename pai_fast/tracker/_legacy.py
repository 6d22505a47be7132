"""camelCase method names of the old perforatedai API (``PBG.pbTracker.addValidationScore`` ...)."""

from __future__ import annotations


class CamelCaseTrackerAPI:
    """Old names; each calls the snake_case method of the tracker."""

    def addValidationScore(self, score, model, *args, forceSwitch=False, **kwargs):  # noqa: N802
        # Old signature: (score, model[, saveName], forceSwitch=False); the save name is the tracker's.
        if args and not isinstance(args[0], str):
            forceSwitch = args[0]
        return self.add_validation_score(score, model, force_switch=kwargs.pop("force_switch", forceSwitch))

    def addExtraScore(self, score, name):  # noqa: N802
        return self.add_extra_score(score, name)

    def addTestScore(self, score, name):  # noqa: N802
        return self.add_test_score(score, name)

    def addExtraScoreWithoutGraphing(self, score, name):  # noqa: N802
        return self.add_extra_score_without_graphing(score, name)

    def addLoss(self, loss):  # noqa: N802
        return self.add_loss(loss)

    def setOptimizer(self, optimizer):  # noqa: N802
        return self.set_optimizer(optimizer)

    def setScheduler(self, scheduler):  # noqa: N802
        return self.set_scheduler(scheduler)

    def setOptimizerInstance(self, optimizer, additional_optimizers=()):  # noqa: N802
        return self.set_optimizer_instance(optimizer, list(additional_optimizers))

    def setupOptimizer(self, net, optArgs, schedArgs=None, parameters=None):  # noqa: N802,N803
        return self.setup_optimizer(net, optArgs, schedArgs, parameters)

    def clearOptimizerAndScheduler(self):  # noqa: N802
        return self.clear_optimizer_and_scheduler()

    def saveGraphs(self, extraString=""):  # noqa: N802,N803
        return self.save_graphs(extraString)

    def saveTrackerSettings(self):  # noqa: N802
        return self.save_tracker_settings()

    def initializeTrackerSettings(self):  # noqa: N802
        return self.initialize_tracker_settings()

    def startEpoch(self, internalCall=False):  # noqa: N802,N803
        return self.start_epoch(internalCall)

    def stopEpoch(self, internalCall=False):  # noqa: N802,N803
        return self.stop_epoch(internalCall)

    def switchTime(self):  # noqa: N802
        return self.switch_time()
