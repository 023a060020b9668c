"""`mosaic evaluate`: reproduce the paper's experiments (Figures 1-3, App. C.4-C.8) on an instance file.

The work is split into *units*, one per (instance, seed, proposal). A unit draws and scores the
largest M once, through exactly the service's code (`CandidateSampler.collect`: prompts → tokenize →
generate → score, no billing), and caches the scored candidates as JSON under ``out/cache``. Every
row is then computed from the cache by `app.mechanism` alone, so a rerun skips finished units
(resumable), and changing the M or τ grid below the cached M needs no model at all.

Smaller M reuse prefixes of the largest draw. The candidates of one proposal are i.i.d., so the first
M of them are a draw of M candidates. For ``mixture`` the service draws a context pool and a reference
pool (`app.auction.sampler.mixture_counts` of the largest M) with independent seeds; M's candidate set is the
first ``mixture_counts(M)`` of each pool, and its ``log q`` is the balance-heuristic mixture with the
shares of that M (exactly what the service computes for an auction of M candidates).

Per (instance, seed, proposal, τ, M) the auction is resolved with `app.mechanism.run_auction` (the
allocation draw uses a generator seeded from the unit seed, M and τ: deterministic by seed), and
`rows.csv` records, per auction: log π*(y) up to its normaliser of the returned reply and its
expectation under the allocation (also centred per (instance, τ)), log π_ref, social welfare,
revenue with and without the offset, totals over advertisers of reward gain and utility gain (both
counterfactuals, with and without the offset), ESS and the fraction of advertisers named.
`advertisers.csv` has the same per advertiser (tidy: one row per (auction, advertiser)).

τ: without ``taus`` each instance is run at the paper's τ (`default_tau(n)`) times
`DEFAULT_TAU_MULTIPLIERS` (a τ sweep for free: τ does not change the candidates); the figures
against M use the paper's τ (multiplier 1). With ``taus`` the grid is those values and the figures
against M use the first one.

Modules, each importing only those above it in this list (and `app.mechanism`, numpy, pandas):

* `metrics`   pure metric functions (numpy, pandas, `app.mechanism`; no I/O);
* `instances` the instance file (`Instance`, `load_instances`);
* `units`     one (instance, seed, proposal) unit: `UnitSpec`, the cached `UnitData`, the cache's
  path, read and write (and `app.auction.engine_client.derive_seed`);
* `rows`      scored candidates → the two tidy tables (`unit_rows`, `build_frames`, column lists,
  τ grid, prefixes of M);
* `claims`    the paper's claims beside our numbers (`paper_claims`, verdicts, number formatting);
* `plots`     the figures (matplotlib; `metrics` only);
* `report`    ``report.md`` (`write_report`: claims, summary and τ tables);
* `run`       the command: `run_evaluation`, opening the engine (the service's `app.auction.sampler`,
  `app.auction.engine_client`, `app.contract`, `app.settings`, `workers.server`, imported
  lazily), collecting units, writing the tables.
See docs/DESIGN.md § Layout.
"""
