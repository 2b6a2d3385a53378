"""How a served study leases trials to loops: sampling, the store's answers, prefetch room.

Mixed into `ServedStudy` (its fields: `study`, `leases`, `same_key`, `ordering`, `budget`,
`store`, `space`, `policy`, `loops`). Invariants: a trial is leased only while `decide()` says
'run'; a trial whose key the store holds COMPLETE is answered from it, not run; one whose key
runs already waits for that run (`same_key`); a define-by-run parameter and a pruning decision
see the study as it is at that moment, whichever thread serves them; a ready trial (its key's
run failed) whose key another ready trial runs now follows that one; a sampler that raises
fails the study, not the loop that asked.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any
from typing import NamedTuple

import optuna
from optuna.distributions import distribution_to_json
from optuna.search_space import IntersectionSearchSpace
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from studyflow._attrs import ATTEMPT_ATTR
from studyflow._attrs import KEY_ATTR
from studyflow._attrs import STARTED_ATTR
from studyflow._attrs import WORKER_ATTR
from studyflow._compat import draw_independent
from studyflow._compat import drop_drawn
from studyflow._compat import forget_relative_params
from studyflow._compat import fresh_trials_view
from studyflow._compat import keep_drawn
from studyflow._compat import storage_of
from studyflow._compat import study_id_of
from studyflow._compat import trial_id_of
from studyflow.config import REPRODUCIBLE_ONLY
from studyflow.errors import JournalWriteError
from studyflow.optuna_ext import CachedFitTPESampler
from studyflow.optuna_ext import RandomInOneRecord
from studyflow.protocol import SUGGEST_METHODS
from studyflow.protocol import Reply
from studyflow.protocol import TrialLease
from studyflow.server._budget import STUDY_FAILED
from studyflow.server._leases import Lease
from studyflow.server._shares import loop_share
from studyflow.store import StoredResult
from studyflow.store import trial_key
from studyflow.store import trial_seed

_logger = logging.getLogger(__name__)

# A stop reason that is the study file's fault: the driver raises it as a ConfigError.
INVALID_STUDY = "invalid study: "
LOOP_SEEN_S = 30.0  # a loop that exchanged this recently still runs (for shares of a cluster)


class SharedSpace(NamedTuple):
    """What `Asking._shared_space` worked out, and when."""

    finished: int  # the study's finished trials then
    space: dict[str, Any]  # the parameters they all have, with the same distribution
    json: dict[str, str]  # those distributions as the lease carries them
    draw: RandomInOneRecord | None  # a random search's drawer for that space
    intersection: IntersectionSearchSpace  # Optuna's, which reads only the trials new to it


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (what travels over msgpack)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


class Asking:
    """The asking half of `ServedStudy`."""

    def ask_ahead(self, loops: list[tuple[str, str]]) -> int:
        """Lease each `(loop, worker)` its next trial now, to hand over with its next reply.

        For loops whose trials are shorter than a round trip: sampled while the reply travels,
        the trial no longer waits for the sampler. Such a trial is sampled without the outcome
        of the one its loop runs now, so at most one is asked ahead beyond one trial per loop
        (the sampler sees at most `loops + 1` trials running, as if one more loop ran).
        Returns how many trials were asked."""
        asked = 0
        for loop, worker in loops:
            if (loop in self.leases.ahead or len(self.leases) > self.loops or not self._loop_has_room(loop)
                    or self._share_of(loop) != "in"):
                continue
            lease = self._ask(worker, loop)
            if lease is None:
                break
            self.leases.ahead[loop] = lease
            asked += 1
        self.backend.flush()
        return asked

    def _lease_batch(self, loop: str, worker: str, want: int) -> Reply | None:
        """Up to `want` trials for a loop (the one asked ahead for it first); None when it
        wants one and none can be leased yet; 'stop' for a loop beyond the study's share of a
        cluster other studies use too, once it holds nothing (nothing new till then)."""
        share = self._share_of(loop)
        if share == "stop":
            return Reply("stop", reason="share")
        ahead = self.leases.take_ahead(loop)
        trials = [ahead] if ahead is not None else []
        if ahead is not None and self.leases.head(loop).started is None:
            self._mark_started(self.leases.head(loop))  # the one the loop runs first has begun
        while share == "in" and len(trials) < want and self._loop_has_room(loop):
            lease = self._ask(worker, loop)
            if lease is None:
                break
            trials.append(lease)
        if trials:
            return Reply("run", trials, self.policy, self.budget.ends_in(), trails=self.trails_dir)
        if self.decide() == "stop":
            return Reply("stop", reason=self.stop_reason)
        if self.spec.release_idle and not self.leases.held(loop) and not self.same_key.ready and (
                self.budget.finished + self.in_flight >= self.n_trials or (self.grid is not None and self._grid_spent())):
            return Reply("stop", reason="budget")  # the rest runs elsewhere: give its job back
        if want > 0 and share == "in":
            return None
        return Reply("ok", policy=self.policy, ends_in=self.budget.ends_in())

    def _share_of(self, loop: str) -> str:
        """`_shares.loop_share` of this loop: loops that hold trials or exchanged in the last
        `LOOP_SEEN_S` count as running; one told to stop is forgotten."""
        now = time.monotonic()
        self.seen_loops[loop] = now
        if self.loop_quota is None:  # no other study open: every exchange, so kept cheap
            return "in"
        running = set(self.leases.loop_queues) | {
            other for other, seen in self.seen_loops.items() if now - seen < LOOP_SEEN_S}
        share = loop_share(loop, self.loop_quota, running, self.leases.held)
        if share == "stop":
            del self.seen_loops[loop]
        return share

    def _loop_has_room(self, loop: str) -> bool:
        """A loop holds at most 1 + prefetch cap trials and no more than its share of what is
        left of the budget; once fewer trials are left to lease than there are loops, it holds
        none ahead (the last trials go to idle loops, not behind a long-running one)."""
        held = self.leases.held(loop)
        if held == 0:
            return True
        left = self.n_trials - self.budget.finished
        if left - self.in_flight < self.loops:
            return False
        share = max(1, math.ceil(left / max(1, self.loops)))
        return held < min(1 + self.policy["cap"], share)

    def suggest(self, number: int, method: str, name: str, kwargs: dict[str, Any]) -> Any:
        """A define-by-run parameter of a leased trial, sampled from the study as it is now.

        Reproducible scheduling cannot replay one (see `config.REPRODUCIBLE_ONLY`): the study
        stops, and the driver raises the reason as a `ConfigError` naming the parameter."""
        if self.ordering.window and name not in self.space and name not in self.leases[number].trial.params:
            self.budget.stop_reason = (f"{INVALID_STUDY}search_space.{name}: suggested define-by-run by "
                                       f"the objective; {REPRODUCIBLE_ONLY}: declare it in search_space")
            self.notify()
            raise ValueError(self.budget.stop_reason)
        self.define_by_run = True
        fresh_trials_view(self.study)
        lease = self.leases[number]
        if lease.drawn:
            drop_drawn(lease.trial, name)  # asked, not answered on the worker: its draw went unused
        return getattr(lease.trial, method)(name, **kwargs)

    def replay_suggested(self, trial: optuna.Trial, suggested: list[list[Any]]) -> None:
        """Record the suggests a loop answered from its lease's relative parameters, in its
        call order, through Optuna's own `suggest_*` (which takes the same relative value)."""
        if suggested:
            self.define_by_run = True
        for method, name, kwargs in suggested:
            if method not in SUGGEST_METHODS:
                raise ValueError(f"studyflow: {method!r} is not a suggest method")
            getattr(trial, method)(name, **kwargs)

    def should_prune(self, number: int) -> bool:
        """The pruner's verdict on a leased trial, from the study as it is now."""
        fresh_trials_view(self.study)
        return self.leases[number].trial.should_prune()

    # --- asking ---

    def _ask(self, worker: str, loop: str) -> TrialLease | None:
        """Lease the loop its next trial: a ready one, else a new one (answered from the store,
        or left to wait for a running key, until one must run); None unless `decide()` says run."""
        while True:
            if self.decide() != "run":
                return None
            if self.same_key.ready:
                trial = self.same_key.ready.pop(0)
                key = self._key(trial)
                if self._key_runs(key):
                    self.same_key.follow(key, trial)  # another ready one runs its key now: wait for it
                    continue
            else:
                if self.ordering.window:
                    self.ordering.apply_received(self._in_flight_numbers,
                                                 upto=self._next_number() - self.ordering.window)
                    self._heed_stop_asked()
                try:
                    trial, key, stored = self._new_trial(worker)
                except JournalWriteError:
                    raise  # the journal's disk, not the sampler
                except Exception as exc:  # the sampler's: the study fails with it, not the loops
                    self._sampler_failed(exc)
                    return None
                self.sampler_failures = 0
                if stored is not None:
                    self._answer_from_store(trial, stored)
                    continue
                if self._key_runs(key):
                    self.same_key.follow(key, trial)
                    continue
            # the trial as journaled, read once; its parameters go out without the deep copy
            # `Trial.params` makes: storage writes replace a trial's dicts, and the one change
            # in place (Optuna's `Trial._suggest`, to its cached trial) comes after the lease left
            journaled = storage_of(self.study).get_trial(trial_id_of(trial))
            system_attrs, params, started = journaled.system_attrs, journaled.params, journaled.datetime_start
            attempt = int(system_attrs.get(ATTEMPT_ATTR, 0))
            lease = Lease(trial, key, worker, attempt, loop, journaled_key=system_attrs.get(KEY_ATTR),
                          journaled_worker=system_attrs.get(WORKER_ATTR))
            if self.leases.add(lease):
                self._mark_started(lease)
            relative, relative_json = self._relative(lease, system_attrs)
            return TrialLease(trial.number, params, key, trial_seed(key), self.store.staging_path(key, trial.number),
                              # for `trial.distributions`, `trial.datetime_start` and Optuna's helpers
                              self._distributions_json(trial, params),
                              None if started is None else started.isoformat(), relative, relative_json)

    def _relative(self, lease: Lease, system_attrs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """The relative parameters (a multivariate sampler's joint sample over the space every
        finished trial shares) for the names the trial does not have yet, with their distributions.

        Optuna samples them at a trial's first suggest; sampled here, in the batch, they travel
        with the lease, and a define-by-run objective's suggests of them are answered on the
        worker instead of one round trip each. Same history, same draws in the same order: a
        study run one trial at a time still proposes plain Optuna's trials. For a sampler that
        draws each parameter on its own, the shared space drawn at the ask (`_drawn`, marked on
        the lease) while trials are in flight together. None for a retry (its fixed parameters
        come first) or under reproducible scheduling (whose refusal of an undeclared name must
        see every suggest)."""
        trial = lease.trial
        if (self.one_record is not None and self.space) or self.ordering.window or "fixed_params" in system_attrs:
            return {}, {}
        values = trial.relative_params  # evaluated once per trial; Optuna's suggests reuse it
        if not values and (self.spec.concurrency > 1 or len(self.leases) > 1):
            # Nothing sampled (TPE's and GP's start-up, no shared space yet) while other trials
            # may run: Optuna samples again at the first suggest, maybe after the start-up. Kept,
            # the empty answer made such trials independent (define-by-run TPE, 8 in flight,
            # Hartmann-6: 86% -> 65-79% of sequential TPE's gain). One trial at a time keeps it:
            # sampling again drew twice (NSGA-II's crossover draws even when it proposes nothing).
            independent = not trial.relative_search_space
            forget_relative_params(trial)
            if not (independent and self._draws_ahead()):
                return {}, {}
            drawn = self._drawn(trial)
            lease.drawn = bool(drawn[0])
            return drawn
        space = trial.relative_search_space or {}
        names = [name for name in values if name in space and name not in trial.params]
        # With its constant liar, Optuna's TPE shares them with the other asks itself (in the
        # trial's system attributes), so a running trial counts with them.
        return ({name: _plain(values[name]) for name in names},
                {name: distribution_to_json(space[name]) for name in names})

    def _draws_ahead(self) -> bool:
        """Whether define-by-run parameters of the shared space are drawn at the ask (`_drawn`):
        for samplers that draw each parameter on its own at its suggest (random search, TPE
        without `multivariate`, whose relative search space is empty), with more than one trial
        in flight. One trial at a time, a trial that does not suggest a drawn name would shift
        the sampler's random stream away from plain Optuna's trials; in flight together, trials
        have no such order to keep."""
        return self.spec.concurrency > 1 and type(self.study.sampler) in (
            optuna.samplers.RandomSampler, CachedFitTPESampler)

    def _drawn(self, trial: optuna.Trial) -> tuple[dict[str, Any], dict[str, str]]:
        """The shared space's parameters (every finished trial has them) drawn for `trial` now,
        each as its suggest would draw it, from the study as it is at the ask (as a declared
        space is sampled), with their distributions; they travel with the lease like relative
        parameters, so a define-by-run objective's suggests of them cost no round trip."""
        shared = self._shared_space()
        space = {name: dist for name, dist in shared.space.items() if name not in trial.params}
        if not space:
            return {}, {}
        if shared.draw is not None and len(space) == len(shared.space):
            values = shared.draw.sample()  # random search: the same draws, one call for the space
            keep_drawn(trial, values, space)
        else:
            values = draw_independent(trial, space)
        return ({name: _plain(values[name]) for name in space}, {name: shared.json[name] for name in space})

    def _shared_space(self) -> SharedSpace:
        """The parameters every finished trial has, with the same distribution (Optuna's
        `IntersectionSearchSpace`, pruned trials included), worked out again only once a trial
        has finished since (it reads every trial); their JSON and, for a random search, its
        drawer are made again only when the space changed."""
        kept = self._shared
        if kept is not None and kept.finished == self.budget.finished:
            return kept
        if kept is None:
            kept = SharedSpace(-1, {}, {}, None, IntersectionSearchSpace(include_pruned=True))
        space = {name: dist for name, dist in kept.intersection.calculate(self.study).items() if not dist.single()}
        if space == kept.space:
            json, draw = kept.json, kept.draw
        else:
            json = {name: distribution_to_json(dist) for name, dist in space.items()}
            draw = RandomInOneRecord(self.study, space) if RandomInOneRecord.applies(self.study, space) else None
        self._shared = SharedSpace(self.budget.finished, space, json, draw, kept.intersection)
        return self._shared

    def _sampler_failed(self, exc: Exception) -> None:
        """A failed ask: logged with its traceback, and the trial it left RUNNING settled.
        After `budget.retries + 1` failures in a row the study stops with the sampler's error
        (its loops are told to stop; the driver raises it), instead of the loops dying and their
        trials being retried as lost workers, which no failure limit would ever stop."""
        self.sampler_failures += 1
        sampler = f"{self.config.sampler.name}, {type(self.study.sampler).__name__}"
        _logger.error("study %s: the sampler raised (%s; attempt %d of %d)", self.config.name, sampler,
                      self.sampler_failures, self.config.budget.retries + 1, exc_info=exc)
        self._settle_orphans()
        if self.sampler_failures > self.config.budget.retries:
            self.budget.stop_reason = (f"{STUDY_FAILED}the sampler ({sampler}) raised {self.sampler_failures} "
                                       f"times in a row: {type(exc).__name__}: {exc}")

    def _settle_orphans(self) -> None:
        """`Study.ask` creates (or takes a waiting retry as) a RUNNING trial before the sampler
        runs: after a failed ask it is in no lease. It is marked not run (a retry is enqueued
        again), so no trial stays RUNNING for the constant liar to avoid."""
        storage = storage_of(self.study)
        known = set(self.leases.leases) | set(self.same_key.numbers()) | set(self.ordering.received)
        for trial in storage.get_all_trials(study_id_of(self.study), deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number in known:
                continue
            self.requeue_retry(trial_id_of(trial))
            self.mark_not_run(trial_id_of(trial))
            storage.set_trial_state_values(trial_id_of(trial), TrialState.FAIL)

    @functools.cached_property
    def _space_json(self) -> dict[str, str]:
        """The study file's distributions as Optuna's JSON, encoded once for every lease."""
        return {name: distribution_to_json(d) for name, d in self.space.items()}

    def _distributions_json(self, trial: optuna.Trial, params: dict[str, Any]) -> dict[str, str]:
        """The distribution of each parameter an asked trial has: the study file's (a retry of
        a define-by-run trial gets its own names only when the objective suggests them)."""
        space = self._space_json
        return {name: space[name] if name in space
                else distribution_to_json(trial.distributions[name]) for name in params}

    def _stored(self, key: str) -> StoredResult | None:
        """The store's COMPLETE result for a new trial's key (None: the trial runs, or waits for
        its key); define-by-run trials are keyed at the tell, and run."""
        stored = None if self.define_by_run else self.store.get(key)
        return stored if stored is not None and stored.state == "COMPLETE" else None

    def _key_runs(self, key: str) -> bool:
        """Whether a new trial with this key waits for the leased trial that runs it already."""
        return not self.define_by_run and bool(self.leases.leased_keys[key])

    def _new_trial(self, worker: str) -> tuple[optuna.Trial, str, StoredResult | None]:
        """A newly sampled trial, its key (journaled with it) and the store's result for it
        (`_stored`). A random- or grid-search trial goes in one record, with the worker it is
        leased to when it will run there (its key neither stored nor running; a define-by-run
        one always runs, keyed at its tell): the tell then has one record fewer to write
        (`Lease.journaled_worker`)."""
        params = self.one_record.sample() if self.one_record is not None and not self._waiting() else None
        if params is not None:
            key = trial_key(self.spec.key_base, params)
            if self.define_by_run:  # keyed at its tell, by the parameters it suggested; it runs
                return self.one_record.create(params, {WORKER_ATTR: worker}), key, None
            stored = self._stored(key)
            attrs = {KEY_ATTR: key}
            if stored is None and not self._key_runs(key):
                attrs[WORKER_ATTR] = worker
            return self.one_record.create(params, attrs), key, stored
        trial = self.study.ask(self.space)
        key = trial_key(self.spec.key_base, trial.params)
        if not self.define_by_run:  # else it is keyed at its tell, by the parameters it suggested
            storage_of(self.study).set_trial_system_attr(trial_id_of(trial), KEY_ATTR, key)
        return trial, key, self._stored(key)

    def _waiting(self) -> list[FrozenTrial]:
        """Enqueued retries, which `Study.ask` hands out before sampling anew."""
        return storage_of(self.study).get_all_trials(study_id_of(self.study), deepcopy=False,
                                                     states=(TrialState.WAITING,))

    def _key(self, trial: optuna.Trial) -> str:
        """A waiting trial's key: journaled, else (a define-by-run trial, keyed at its tell) its
        parameters' as they are now."""
        journaled = storage_of(self.study).get_trial_system_attrs(trial_id_of(trial)).get(KEY_ATTR)
        return journaled if journaled is not None else trial_key(self.spec.key_base, trial.params)

    def _mark_started(self, lease: Lease) -> None:
        """Journaled, so a resume after a hard kill retries a begun trial and drops a held one."""
        lease.started = time.monotonic()
        storage_of(self.study).set_trial_system_attr(trial_id_of(lease.trial), STARTED_ATTR, True)
