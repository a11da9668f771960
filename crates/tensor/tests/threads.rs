//! The thread-count knob: set before the first tensor, fixed afterwards, with clear errors.

use kiln_tensor::{num_threads, set_num_threads, Tensor};

#[test]
fn the_thread_count_is_set_once_before_the_first_tensor() {
    assert!(set_num_threads(0).is_err());
    set_num_threads(3).unwrap();
    let t = Tensor::from_vec(vec![1.0f32; 1 << 16], [256, 256]).unwrap();
    let _ = t.matmul(&t).unwrap();
    assert_eq!(num_threads(), 3);
    set_num_threads(3).unwrap();
    let e = set_num_threads(2).unwrap_err().to_string();
    assert!(
        e.contains("already runs 3 threads") && e.contains("KILN_NUM_THREADS"),
        "{e}"
    );
}
