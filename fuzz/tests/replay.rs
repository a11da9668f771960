//! Every checked-in corpus input and every regression (an input that once crashed a target) runs
//! through its target without a panic.

use kiln_fuzz::{crate_dir, inputs_in, TARGETS};

#[test]
fn corpus_and_regressions_run_without_a_panic() {
    let dir = crate_dir();
    for target in TARGETS {
        let corpus = inputs_in(&dir.join("corpus").join(target.name));
        assert!(!corpus.is_empty(), "{}: no corpus", target.name);
        for (path, input) in corpus
            .iter()
            .chain(inputs_in(&dir.join("regressions").join(target.name)).iter())
        {
            let outcome = std::panic::catch_unwind(|| (target.run)(input));
            assert!(outcome.is_ok(), "{}: {} panics", target.name, path.display());
        }
    }
}
