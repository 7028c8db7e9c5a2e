"""What a run cost: wall and CPU seconds, FLOPs, and energy with CO2-equivalent, in `cost.json`.

`CostMeter` measures one segment of a run (one call of a stage) and keeps the run's running
totals in `<run_dir>/cost.json`, written atomically at every `flush()` and when the segment ends
(also on an exception). A run killed and resumed therefore adds the resumed segment to what the
folder recorded before; the work lost since the last flush of a killed segment is not recorded.

cost.json
  wall_seconds, cpu_seconds  time.perf_counter / time.process_time (user + system CPU of every
                             thread of this process; child processes are not included)
  train_flops_dense/_sparse, eval_flops_dense/_sparse   from the caller's counters (tinydot.flops)
  energy_kwh, co2_kg         codecarbon's estimate (null when a segment could not be metered)
  cpu_energy_kwh, ram_energy_kwh   the two parts of energy_kwh
  energy_mode                how codecarbon got the energy: "measured: ...", "estimated: ..." or
                             "partly measured: ..."; energy_measured is true only for "measured"
  country, country_source    the ISO 3166 alpha-3 code whose grid mix converts kWh to CO2
  codecarbon_version
  segments                   the same fields for each segment, with its start time

Energy comes from codecarbon's OfflineEmissionsTracker, set up so that it
  - makes no network request: offline tracker with an explicit country (no geolocation), no
    output methods, no emissions endpoint, no Electricity Maps token (tests block sockets);
  - writes nothing: no emissions.csv (output_methods=[]), no lock file under the temp folder and
    no SIGINT/SIGTERM handlers (allow_multiple_runs=True: codecarbon's lock installs both), so
    meters in concurrent processes do not collide; explicit arguments override whatever a
    ~/.codecarbon.config, ./.codecarbon.config or CODECARBON_* variable says about these;
  - measures this process, not the machine (tracking_mode="process"): the machine may be shared;
  - stays quiet unless verbose (its logger at CRITICAL).
Where the machine exposes power counters (Intel RAPL, ...) codecarbon reads the CPU's energy from
them; without (as on the 2-vCPU AMD EPYC virtual machine this was written on: no
/sys/class/powercap) it estimates: the CPU as a TDP times this process's CPU load (an unknown CPU
model gets codecarbon's default of 4 W per thread), and the RAM from a power model (in 3.3.2:
5 W per estimated memory module, at least 10 W). RAM energy is always a model. `energy_mode` spells out
which case a run was in; an estimate is never recorded as a measurement.

If codecarbon is missing or fails, the run goes on: one warning line, energy recorded as null.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from tinydot.errors import ConfigError, TinydotError
from tinydot.io import atomic_write_text, hold_folder

COST_FILE = "cost.json"
DEFAULT_COUNTRY = "USA"  # when neither the caller, $TINYDOT_COUNTRY nor the locale names a country
_SUMMED = ("wall_seconds", "cpu_seconds", "train_flops_dense", "train_flops_sparse", "eval_flops_dense",
           "eval_flops_sparse", "energy_kwh", "co2_kg", "cpu_energy_kwh", "ram_energy_kwh")
_DESCRIBED = ("energy_mode", "country", "country_source", "codecarbon_version")
_MEASURED_CPU = {"intel_rapl": "RAPL counters", "windows_emi": "Windows energy meter (RAPL)",
                 "intel_power_gadget": "Intel Power Gadget"}

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- country

def _alpha3(code: str) -> str | None:
    """ISO 3166 alpha-3 code of an alpha-2 or alpha-3 code, or None if unknown."""
    try:
        import pycountry  # comes with codecarbon; without it only alpha-3 codes are understood
    except ImportError:
        return code if len(code) == 3 else None
    country = pycountry.countries.get(**{f"alpha_{len(code)}": code}) if len(code) in (2, 3) else None
    return country.alpha_3 if country else None


def locale_territory(environ=os.environ) -> str | None:
    """The territory of the user's locale ('DE' for de_DE.UTF-8), or None (C, POSIX, unset). As in
    POSIX, a set LC_ALL overrides LANG (LC_ALL=C names no territory, whatever LANG says)."""
    locale = environ.get("LC_ALL") or environ.get("LANG", "")
    return match.group(1) if (match := re.match(r"^[a-z]{2,3}_([A-Z]{2})\b", locale)) else None


@functools.cache
def grid_mix_countries() -> frozenset[str] | None:
    """The alpha-3 codes codecarbon has a grid carbon intensity for (its bundled global energy mix),
    read without importing codecarbon; None when codecarbon or its table is not there."""
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "data" / "private_infra" / "global_energy_mix.json"
    try:
        return frozenset(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _without_grid_mix(alpha3: str) -> bool:
    """Whether codecarbon would silently use its world average for `alpha3` (a code it has no grid mix for)."""
    known = grid_mix_countries()
    return known is not None and alpha3 not in known


def resolve_country(country: str | None = None, environ=os.environ, source: str = "argument") -> tuple[str, str]:
    """(alpha-3 country code, where it came from) for converting energy to CO2.

    Order: `country` (`source` names it in messages), then $TINYDOT_COUNTRY, then the territory of
    the locale (a setting that usually, not always, matches where the machine is), then
    DEFAULT_COUNTRY. The CLI hands its `--country` to every run (study workers included) as
    $TINYDOT_COUNTRY and names itself in $TINYDOT_COUNTRY_SOURCE, so the recorded source is "--country".
    """
    if country is not None and not country.strip():  # an empty environment variable only counts as unset
        raise ConfigError(f"{source} is empty; give an ISO 3166 code such as USA, FRA or DEU")
    given = environ.get("TINYDOT_COUNTRY_SOURCE", "TINYDOT_COUNTRY")
    for code, named in ((country, source), (environ.get("TINYDOT_COUNTRY"), given)):
        if code:
            alpha3 = _alpha3(code.strip().upper())
            if alpha3 is None:
                raise ConfigError(f"unknown country code {code!r} ({named}); "
                                  "give an ISO 3166 code such as USA, FRA or DEU")
            if _without_grid_mix(alpha3):
                raise ConfigError(f"codecarbon has no grid carbon intensity for {alpha3} ({named}) and would use "
                                  "its world average; give the code of the country whose grid powers the machine")
            return alpha3, named
    if (territory := locale_territory(environ)) and (alpha3 := _alpha3(territory)):
        if not _without_grid_mix(alpha3):
            return alpha3, f"locale ({territory})"
        return DEFAULT_COUNTRY, f"default (locale {territory}: no grid mix in codecarbon)"
    return DEFAULT_COUNTRY, "default"


# --------------------------------------------------------------------------- codecarbon

def energy_mode(tracker) -> tuple[str, bool]:
    """(description, measured) of how `tracker` gets its energy, from the hardware it set up.

    Reads codecarbon's hardware objects (private attributes, read defensively): anything this
    function does not recognise counts as estimated.
    """
    parts, measured = [], []
    for hardware in getattr(tracker, "_hardware", []):
        kind, mode = type(hardware).__name__, getattr(hardware, "_mode", None)
        if kind == "CPU" and mode in _MEASURED_CPU:
            parts.append(f"CPU from {_MEASURED_CPU[mode]}")
            measured.append(True)
        elif kind == "CPU" and mode == "cpu_load":
            parts.append(f"CPU = {getattr(hardware, '_tdp', '?')} W TDP x this process's CPU load "
                         f"(codecarbon cpu_load mode, no power counter read)")
            measured.append(False)
        elif kind == "CPU":
            parts.append(f"CPU = constant share of {getattr(hardware, '_tdp', '?')} W TDP "
                         f"(codecarbon {mode} mode, no power counter read)")
            measured.append(False)
        elif kind == "RAM":
            parts.append("RAM = codecarbon power model")
            measured.append(False)
        elif kind == "GPU":
            parts.append("GPU from NVML/ROCm counters")
            measured.append(True)
        else:
            parts.append(f"{kind} ({mode or 'codecarbon'})")
            measured.append(kind == "AppleSiliconChip")
    if not parts:
        return "estimated (codecarbon hardware unknown)", False
    prefix = "measured" if all(measured) else "partly measured" if any(measured) else "estimated"
    return f"{prefix}: " + "; ".join(parts), all(measured)


class _Energy:
    """One codecarbon tracker for one segment; every failure becomes a warning and null energy."""

    def __init__(self, run_dir: Path, country: str, verbose: bool):
        self.tracker, self.latest, self.version, self.failed = None, None, None, False
        try:
            self._start(run_dir, country, verbose)
        except Exception as error:  # noqa: BLE001 - accounting must never stop the run
            self._fail(f"{type(error).__name__}: {error}")

    def _start(self, run_dir, country, verbose):
        # codecarbon is imported here, not at the top: it takes ~0.2 s to import (a run that fails to
        # load or start it goes on without energy)
        import codecarbon
        from codecarbon import OfflineEmissionsTracker
        from codecarbon.output import BaseOutput

        energy = self

        class Latest(BaseOutput):  # receives the totals at every flush() and stop(), writes nothing
            def out(self, total, delta):
                energy.latest = total

        level = "info" if verbose else "critical"
        logging.getLogger("codecarbon").setLevel(level.upper())  # before the tracker's first log line
        self.version = codecarbon.__version__
        self.tracker = OfflineEmissionsTracker(
            country_iso_code=country, cloud_provider=None, cloud_region=None,
            output_methods=[], output_handlers=[Latest()], output_dir=str(run_dir),
            emissions_endpoint=None, electricitymaps_api_token=None,
            tracking_mode="process", allow_multiple_runs=True, log_level=level)
        self.tracker.start()  # codecarbon swallows its own errors here: flush() reveals them
        self.mode, self.measured = energy_mode(self.tracker)
        self.read()

    def _fail(self, reason: str) -> None:
        if not self.failed:
            log.warning("energy not recorded (codecarbon: %s); the run goes on", reason)
        tracker, self.failed, self.tracker = self.tracker, True, None
        if tracker is not None:
            try:  # end its measuring threads
                tracker.stop()
            except Exception:  # noqa: BLE001 - already failing; nothing more to report
                pass

    def read(self, stop: bool = False) -> dict:
        """Energy so far: energy_kwh, co2_kg, cpu/ram_energy_kwh (None when not metered)."""
        if self.tracker is not None:
            try:
                self.latest = None
                emissions = self.tracker.stop() if stop else self.tracker.flush()
                if emissions is None or self.latest is None:
                    self._fail("the tracker returned no measurement")
            except Exception as error:  # noqa: BLE001 - accounting must never stop the run
                self._fail(f"{type(error).__name__}: {error}")
            if stop:
                self.tracker = None
        if self.failed or self.latest is None:
            return no_energy("not recorded", self.version)
        data = self.latest
        return {"energy_kwh": data.energy_consumed, "co2_kg": data.emissions, "cpu_energy_kwh": data.cpu_energy,
                "ram_energy_kwh": data.ram_energy, "energy_mode": self.mode, "energy_measured": self.measured,
                "codecarbon_version": self.version}


def no_energy(mode: str, version: str | None = None) -> dict:
    return {"energy_kwh": None, "co2_kg": None, "cpu_energy_kwh": None, "ram_energy_kwh": None,
            "energy_mode": mode, "energy_measured": False, "codecarbon_version": version}


# --------------------------------------------------------------------------- the meter

def read_cost(run_dir: str | os.PathLike) -> dict | None:
    """The cost recorded in `run_dir`, or None if there is none."""
    path = Path(run_dir) / COST_FILE
    return json.loads(path.read_text()) if path.exists() else None


def summarize(segments: list[dict]) -> dict:
    """Run totals from its segments: sums, null where any segment has null, descriptions joined."""
    total = {}
    for key in _SUMMED:
        values = [s.get(key) for s in segments]
        total[key] = None if any(v is None for v in values) else sum(values)
    for key in _DESCRIBED:
        values = list(dict.fromkeys(s[key] for s in segments if s.get(key) is not None))
        total[key] = " | ".join(values) if values else None
    total["energy_measured"] = all(s.get("energy_measured", False) for s in segments)
    total["segments"] = segments
    return total


def total_cost(folder: str | os.PathLike) -> dict | None:
    """The summed cost of every run recorded under `folder` (every cost.json in its tree: a lottery's
    levels and controls, a study job's lottery), with `runs`, their count; None if there is none."""
    totals = [{k: v for k, v in json.loads(path.read_text()).items() if k != "segments"}
              for path in sorted(Path(folder).rglob(COST_FILE))]
    if not totals:
        return None
    summed = summarize(totals)
    summed.pop("segments")
    summed["runs"] = len(totals)
    return summed


class CostMeter:
    """Meter one segment of a run into `<run_dir>/cost.json`, adding to the segments recorded there.

    counters : called at every flush for this segment's counts so far (e.g. FlopTally.totals)
    country  : ISO 3166 code for the CO2 conversion (see `resolve_country` for the default)
    energy   : False skips codecarbon (energy recorded as null, mode "off")
    verbose  : let codecarbon log (INFO)
    resumes  : False for a run that recomputes everything when run again (an analysis): cost.json then
               holds this run alone, not its sum with earlier runs into the same folder

        with CostMeter(run_dir, counters=tally.totals) as meter:
            ...
            meter.flush()  # e.g. with every checkpoint
    """

    def __init__(self, run_dir: str | os.PathLike, *, counters: Callable[[], dict[str, int]] | None = None,
                 country: str | None = None, energy: bool = True, verbose: bool | None = None,
                 record_user_errors: bool = True, resumes: bool = True):
        self.run_dir = Path(run_dir)
        self.resumes = resumes
        self.record_user_errors = record_user_errors  # False: a TinydotError leaves no cost.json behind
        self.counters = counters or dict
        self.country, self.country_source = resolve_country(country)
        # verbose None: $TINYDOT_VERBOSE (set by `tinydot --verbose`)
        self.energy = energy
        self.verbose = bool(os.environ.get("TINYDOT_VERBOSE")) if verbose is None else verbose
        self._energy = None

    def __enter__(self) -> CostMeter:
        self._created = [d for d in (self.run_dir, *self.run_dir.parents) if not d.exists()]
        self.run_dir.mkdir(parents=True, exist_ok=True)  # codecarbon's output_dir must exist (it writes nothing)
        self._hold = hold_folder(self.run_dir)  # a second process metering the same run is refused
        self._hold.__enter__()
        try:
            self._start()
        except BaseException:  # e.g. Ctrl-C in codecarbon's start: __exit__ will not run, so let go here
            self._hold.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        try:
            previous = (read_cost(self.run_dir) or {}) if self.resumes else {}
            self._previous = list(previous.get("segments", [])) if isinstance(previous, dict) else []
        except (ValueError, OSError) as error:  # not JSON, not UTF-8, unreadable
            log.warning("%s unreadable (%s): cost totals start again", self.run_dir / COST_FILE, error)
            self._previous = []
        self._started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if self.energy:  # first: codecarbon's first start in a process takes ~1.4 s its energy does not cover
            self._energy = _Energy(self.run_dir, self.country, self.verbose)
        self._wall, self._cpu = time.perf_counter(), time.process_time()  # the span the energy covers

    def segment(self, stop: bool = False) -> dict:
        """This segment's cost so far (stop=True also stops the energy tracker)."""
        energy = self._energy.read(stop=stop) if self._energy is not None else no_energy("off")
        return {"started": self._started, "wall_seconds": time.perf_counter() - self._wall,
                "cpu_seconds": time.process_time() - self._cpu, **self.counters(), **energy,
                "country": self.country, "country_source": self.country_source}

    def flush(self, stop: bool = False) -> dict:
        """Write the run's totals, this segment included so far, to cost.json; return them."""
        total = summarize(self._previous + [self.segment(stop)])
        atomic_write_text(self.run_dir / COST_FILE, json.dumps(total, indent=2) + "\n")
        return total

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if not self.record_user_errors and isinstance(error, TinydotError):
                self.segment(stop=True)  # stop the tracker; the run wrote nothing, neither does its meter
                for folder in self._created:  # innermost first: remove what __enter__ made, if still empty
                    if folder.exists() and not any(folder.iterdir()):
                        folder.rmdir()
                return
            self.total = self.flush(stop=True)
        finally:
            self._hold.__exit__(None, None, None)
