//! A short tour of kiln-tensor used on its own: creation, views, broadcasting, reductions,
//! matmul and softmax. Run with `cargo run -p kiln-tensor --example tensor_tour`.

use kiln_tensor::{DType, Device, Result, Tensor, TensorRng};

fn main() -> Result<()> {
    // A 2x3 matrix from a range, and its transpose: a view that shares storage.
    let a = Tensor::arange(1.0, 7.0, 1.0, DType::F32, Device::Cpu)?.reshape([2, 3])?;
    let at = a.t()?;
    println!("a =\n{a}\n\na^T shares storage with a: {}", at.same_storage(&a));

    // Broadcasting: add a row vector to every row.
    let row = Tensor::from_vec(vec![10f32, 20.0, 30.0], [3])?;
    println!("\na + row =\n{}", a.add(&row)?);

    // Reductions and matmul.
    println!("\nrow sums = {}", a.sum(1, false)?);
    println!("\na @ a^T =\n{}", a.matmul(&at)?);

    // Seeded random numbers are reproducible on every machine (ChaCha8).
    let mut rng = TensorRng::new(42);
    let logits = Tensor::randn([2, 4], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng)?;
    let probs = logits.softmax(-1)?;
    println!("\nsoftmax rows sum to {}", probs.sum(-1, false)?);

    // Mistakes are errors, not panics.
    match a.matmul(&a) {
        Err(e) => println!("\nexpected error: {e}"),
        Ok(_) => unreachable!("a [2,3] x [2,3] product cannot succeed"),
    }
    Ok(())
}
