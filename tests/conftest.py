"""Tests of numerics run in float64. Compiled programs are shared between the test processes
(and the command-line runs the tests start) through JAX's persistent compilation cache in
.pytest_cache/jax, unless NTK_ODE_CACHE_DIR names another folder (empty: off)."""

import os

import jax
import pytest

from ntk_ode.cli import enable_compilation_cache

jax.config.update("jax_enable_x64", True)
os.environ.setdefault(
    "NTK_ODE_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache", "jax")
)
enable_compilation_cache()


class _Lowerings:
    """Counts in-process compilations: every one lowers to MLIR, whether or not the persistent
    compilation cache then serves the executable."""

    def __init__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self)

    def __call__(self, event, duration, **_):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            self.count += 1


_LOWERINGS = _Lowerings()


@pytest.fixture
def compilations():
    """The process's compilation counter (read ``.count`` before and after a call)."""
    return _LOWERINGS


@pytest.fixture
def relu_without_closed_forms():
    """relu registered without closed forms (its duals are then quadratures), kink declared."""
    from ntk_ode import activations

    return activations.register_activation(
        "relu_quadrature_test",
        jax.nn.relu,
        activations.get_activation("relu").dfn,
        dphi_lipschitz=False,
        kinks=(0.0,),
        overwrite=True,
    )


# The slow tier: `make test-slow` (and CI) runs these, `make test` leaves them out so that the
# README's test command stays near 10 minutes on 2 cores. They are the longest tests of a full run
# (pytest --durations=0: each over ~20 s on 2 cores) and the tests that share their fixtures:
# end-to-end runs (demo, tutorials, kill-and-resume, training, subprocess clusters, trained
# ensembles of Neural ODEs) and the longest accuracy checks, each module keeping faster checks
# in the default tier.
SLOW = (
    "tests/test_limits.py::test_resnet_substitution_and_picard_agree[tanh]",
    "tests/test_limits.py::test_sharded_equals_unsharded",
    "tests/test_sklearn.py::test_values_are_kernel_fn_at_sigma_w_T",
    "tests/test_ensemble.py::test_ensemble_equals_gp_inference_gradient_descent_and_matrix_exponentials",
    "tests/test_tiles.py::test_a_missing_coordinator_or_process_stops_in_seconds_with_a_message",
    "tests/test_gradients.py::test_adjoint_matches_backprop[linear-softplus]",
    "tests/test_hyper.py::test_marginal_likelihood_recovers_a_known_scale",
    "tests/test_tutorials.py::test_tutorial_runs[05_large_n]",
    "tests/test_cli.py::test_sweep_prints_its_slope_with_a_standard_error_and_plots",
    "tests/test_nystrom.py::test_more_centres_approach_the_full_solution_and_lower_the_test_error",
    "tests/test_tutorials.py::test_tutorial_runs[06_fit_hyperparameters]",
    "tests/test_limits.py::test_ode_kernel_matches_richardson_of_resnet_kernels_and_rate",
    "tests/test_faults.py::test_killed_sweep_resumes_to_the_uninterrupted_result",
    "tests/test_faults.py::test_killed_training_resumes_bit_identically",
    "tests/test_untied.py::test_kernels_match_monte_carlo_of_finite_networks[tanh]",
    "tests/test_model.py::test_a_new_setting_of_the_finite_width_model_compiles_nothing",
    "tests/test_limits_accuracy.py::test_relu_ode_kernel_reaches_1e8_with_honest_estimate",
    "tests/test_limits_accuracy.py::test_relu_ode_kernel_of_an_input_with_itself_has_a_tight_estimate[1.0-1.0]",
    "tests/test_limits_accuracy.py::test_relu_ode_kernel_of_an_input_with_itself_has_a_tight_estimate[6.0-3.0]",
    "tests/test_traceable.py::test_jit_and_vmap_over_parameters_equal_eager[None]",
    "tests/test_docs.py::test_python_blocks_in_the_docs_run[README.md#0]",
    "tests/test_cli.py::test_demo_smallest",
    "tests/test_empirical.py::test_batched_empirical_ntk_equals_the_unbatched_call",
    "tests/test_untied.py::test_certified_untied_kernels_match_an_independent_recursion[gelu-1/sqrt(L)-phi-16-3.0-2.5-1.5]",
    "tests/test_tiles.py::test_two_processes_deal_the_seeds_of_a_width_sweep",
    "tests/test_empirical.py::test_width_sweep_slope_and_resume",
    "tests/test_limits.py::test_symmetry_rectangular_and_psd",
    "tests/test_limits.py::test_relu_closed_form_vs_quadrature",
    "tests/test_tables.py::test_table_path_matches_direct_solves_within_its_bound[erf-None]",
    "tests/test_limits_accuracy.py::test_registered_kinked_activation_kernel_estimate_is_honest",
    "tests/test_experiments.py::test_experiment_runs_and_resumes[E7]",
    "tests/test_empirical.py::test_monte_carlo_mean_matches_kernel_fn[tanh-linear]",
    "tests/test_train.py::test_adjoint_and_backprop_training_agree_and_resume",
    "tests/test_experiments.py::test_experiment_runs_and_resumes[E6]",
    "tests/test_untied.py::test_certified_untied_kernels_match_an_independent_recursion[tanh-1/sqrt(L)-phi-16-3.0-2.5-3.0]",
    "tests/test_tiles.py::test_two_processes_write_the_same_kernel_as_one",
    "tests/test_empirical.py::test_three_methods_agree[linear-None]",
    "tests/test_tutorials.py::test_tutorial_runs[04_activation_comparison]",
    "tests/test_empirical.py::test_width_sweep_sharded_over_devices_equals_single_device",
    "tests/test_empirical.py::test_monte_carlo_mean_matches_kernel_fn[tanh-phi]",
    "tests/test_empirical.py::test_three_methods_agree[phi-None]",
    "tests/test_train.py::test_loss_below_theory_bound_and_geometric",
    "tests/test_limits_accuracy.py::test_relu_near_duplicate_inputs_estimate_is_honest",
    "tests/test_train.py::test_ntk_stays_near_initialization",
    "tests/test_train.py::test_infinite_width_prediction_improves_with_width",
    "tests/test_ensemble.py::test_ensemble_matches_64_trained_neural_odes_of_width_256",
    "tests/test_hyper.py::test_gradients_match_finite_differences[softplus-None-1e-08]",
    "tests/test_empirical.py::test_monte_carlo_mean_matches_kernel_fn[softplus-linear]",
    "tests/test_engine.py::test_a_fit_warns_when_its_fixed_grid_kernel_is_inaccurate",
    "tests/test_harmonics.py::test_zonal_kernel_function_matches_direct_values_within_its_bound[erf-None]",
    "tests/test_tiles.py::test_a_killed_process_of_a_real_two_process_run_stops_the_run_and_is_named",
    # 18-44 s each in a default-tier run with a cold compilation cache (333 tests, 951 s beside other
    # work); each module keeps a faster check of the same code in the default tier
    "tests/test_ensemble.py::test_ensemble_matches_64_trained_resnets_of_width_256",
    "tests/test_sklearn.py::test_gaussian_process_fit_finds_the_optimum_of_fit_hyperparameters",
    "tests/test_tutorials.py::test_tutorial_runs[07_ensemble_predictions]",
    "tests/test_tutorials.py::test_tutorial_runs[02_finite_vs_infinite_width]",
    "tests/test_empirical.py::test_monte_carlo_mean_matches_kernel_fn[softplus-phi]",
    "tests/test_docs.py::test_python_blocks_in_the_docs_run[index.md#0]",
    "tests/test_experiments.py::test_experiment_runs_and_resumes[E9]",
    "tests/test_experiments.py::test_experiment_runs_and_resumes[E5]",
    "tests/test_duals_accuracy.py::test_engine_duals_at_any_variance_match_the_reference_within_their_certificate[gelu]",
    "tests/test_duals_accuracy.py::test_engine_duals_at_any_variance_match_the_reference_within_their_certificate[sigmoid]",
    "tests/test_duals_accuracy.py::test_engine_duals_at_any_variance_match_the_reference_within_their_certificate[silu]",
    "tests/test_nystrom.py::test_float32_ensemble_and_nystrom_agree_with_float64",
    # 15-27 s each; the default tier ran 323 tests in 656 s on a fresh clone (with other work beside it)
    "tests/test_tutorials.py::test_tutorial_runs[03_training_with_the_theory]",
    "tests/test_limits.py::test_resnet_kernel_matches_monte_carlo_of_finite_networks[linear-softplus]",
    "tests/test_limits.py::test_resnet_kernel_matches_monte_carlo_of_finite_networks[linear-tanh]",
    "tests/test_gradients.py::test_gradients_match_central_finite_differences[None]",
    "tests/test_experiments.py::test_experiment_runs_and_resumes[E4]",
    "tests/test_faults.py::test_sweep_refuses_another_solver_and_a_training_another_optimizer",
    # quadrature duals: each grid point costs ~1e5 evaluations (the default tier keeps softplus)
    "tests/test_engine.py::test_newton_with_quadrature_duals_matches_the_certified_series[tanh-4.0]",
    "tests/test_engine.py::test_newton_converges_for_a_kinked_activation_without_closed_forms",
    # 20-34 s each; the default tier ran 317 tests in 862 s on 2 cores with a warm compilation
    # cache (990 s on a fresh clone), on a day when this machine ran ~2.5x slower than before
    "tests/test_tutorials.py::test_tutorial_runs[01_kernels_of_a_dataset]",
    "tests/test_experiments.py::test_experiment_runs_and_resumes[E8]",
    "tests/test_experiments.py::test_experiment_runs_and_resumes[E3]",
    "tests/test_experiments.py::test_experiment_runs_and_resumes[E1]",
    "tests/test_experiments.py::test_experiment_runs_and_resumes[E2]",
    "tests/test_experiments.py::test_experiment_runs_and_resumes[E13]",
    "tests/test_gradients.py::test_prop2_rates_softplus[256]",
    "tests/test_gradients.py::test_adjoint_matches_backprop[linear-tanh]",
    "tests/test_hyper.py::test_gradients_match_finite_differences[relu-None-1e-07]",
    "tests/test_sklearn.py::test_gradient_in_log_hyperparameters_equals_central_differences",
    "tests/test_engine.py::test_quadrature_self_pairs_reuse_the_single_input_solution_and_warm_starts_change_nothing",
    "tests/test_limits.py::test_resnet_kernel_matches_monte_carlo_of_finite_networks[phi-softplus]",
    "tests/test_cli.py::test_train_from_an_empty_folder_extends_and_refuses_another_seed",
    # quadrature duals on grids of 25 to 49 nodes
    "tests/test_limits_accuracy.py::test_ode_kernel_with_quadrature_duals_end_to_end_has_an_honest_estimate",
    "tests/test_engine.py::test_a_series_within_the_stand_in_bound_measures_the_time_grid_change_of_quadrature",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid in SLOW:
            item.add_marker(pytest.mark.slow)
