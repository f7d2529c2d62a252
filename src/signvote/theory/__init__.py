"""The paper's theory as functions (see :mod:`signvote.theory.core` for the notation):

- :mod:`~signvote.theory.core`: a worker's sign error (Bernstein et al.'s Lemma 1 and
  Cantelli's variance-only form), the majority vote's exact failure and its Cantelli bound,
  the checker, the convergence rates (Theorem 2 as printed and the project's derived
  rate), and what ``--measure-theory`` records in training.
- :mod:`~signvote.theory.coalition`: a colluding coalition's exact effect on one
  coordinate of the vote (failure, wrong sign, progress) for the report's vote cancelling,
  OptimalVote, cancel-to-zero and the omniscient best response, against the report's
  step-1 worst case; bounds on the vote's failure compared with the exact worst case.
"""

from signvote.theory.as_printed import (  # noqa: F401
    REPORT,
    Verdict,
    report_lemma1bis_sign_error,
    report_tolerable_fraction,
    theorem2bis_failure,
    theorem2bis_failure_in_p,
    theorem2bis_rate,
    verdict,
)
from signvote.theory.coalition import (  # noqa: F401
    BOUNDS,
    MENGOLI,
    STRATEGIES,
    BoundPoint,
    Outcome,
    best_response_verdicts,
    bound_verdicts,
    coalition_failure,
    coalition_outcome,
    coalition_verdicts,
    corrected_mass,
    failure_gap,
    hoeffding_failure_bound,
    honest_sum_best_response,
    omniscient_best_total,
    sign_averaged,
    tightest_bounds,
    tightest_summary,
    worst_case_gaps,
    worst_case_verdicts,
)
from signvote.theory.core import (  # noqa: F401
    CRITICAL_SNR,
    MEASURE_COLUMNS,
    MEASURE_P_SPREAD_COLUMNS,
    MEASURE_STEP_COLUMNS,
    MODES,
    NOISES,
    OBJECTIVES,
    RATE_BOUNDS,
    RATE_CASES,
    RATE_SNR_GRID,
    SNR_GRID,
    SQRT3,
    Check,
    Noise,
    Objective,
    RateCase,
    RateCheck,
    cantelli_sign_error,
    check_all,
    check_bound,
    lemma1_sign_error,
    lemma1bis_sign_error,
    measure_step,
    p_coordinate_spread,
    predicted_vote_wrong,
    rate_bounds,
    rate_check,
    sign_error_monte_carlo,
    simulate_vote_descent,
    theorem2_rate,
    theorem2_schedule,
    tolerable_byzantine,
    tolerable_fraction,
    vote_failure_bound,
    vote_failure_exact,
    vote_failure_monte_carlo,
    vote_failure_per_coordinate,
    vote_rate_bound,
)
