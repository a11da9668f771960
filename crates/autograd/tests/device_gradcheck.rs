//! The gradchecks on every available device: inputs live on the device, so the forward, the
//! backward formulas (tensor ops) and the finite differences all run there. Skipped, saying why,
//! where no GPU can be used (CI has none; `scripts/gpu-check.sh` runs this on a GPU machine).

use kiln_autograd::{gradcheck, GradcheckOptions, Result, Var};
use kiln_tensor::{DType, Device, Tensor, TensorRng};

fn devices() -> Vec<Device> {
    match Device::Cuda(0).ensure_available() {
        Ok(()) => vec![Device::Cuda(0)],
        Err(e) => {
            eprintln!("device gradchecks skipped for cuda:0: {e}");
            vec![]
        }
    }
}

fn randn(shape: &[usize], seed: u64, device: Device) -> Tensor {
    Tensor::randn(
        shape.to_vec(),
        0.0,
        1.0,
        DType::F64,
        Device::Cpu,
        &mut TensorRng::new(seed),
    )
    .and_then(|t| t.to_device(device))
    .unwrap()
}

fn opts() -> GradcheckOptions {
    GradcheckOptions {
        eps: 1e-6,
        atol: 1e-6,
        rtol: 1e-4,
        seed: 5,
    }
}

fn targets() -> Tensor {
    Tensor::from_vec(vec![4i64, 0, 2], [3]).unwrap()
}

type Case = (&'static str, fn(&[Var]) -> Result<Var>, Vec<Vec<usize>>);

#[test]
fn gradchecks_pass_on_every_device() {
    let cases: Vec<Case> = vec![
        (
            "exp * tanh",
            |v| v[0].exp()?.mul(&v[1].tanh()?),
            vec![vec![3, 4], vec![3, 4]],
        ),
        (
            "sigmoid / (1 + x^2)",
            |v| v[0].sigmoid()?.div(&v[0].mul(&v[0])?.add(&v[1].exp()?)?),
            vec![vec![5], vec![5]],
        ),
        (
            "gelu + silu",
            |v| v[0].gelu()?.add(&v[1].silu()?),
            vec![vec![2, 3], vec![2, 3]],
        ),
        ("broadcast sub", |v| v[0].sub(&v[1]), vec![vec![4, 3], vec![3]]),
        ("matmul", |v| v[0].matmul(&v[1]), vec![vec![3, 5], vec![5, 2]]),
        (
            "batched matmul",
            |v| v[0].matmul(&v[1]),
            vec![vec![2, 3, 4], vec![4, 2]],
        ),
        (
            "sum and mean",
            |v| v[0].sum(1usize, true)?.mul(&v[0].mean(0usize, false)?),
            vec![vec![3, 4]],
        ),
        ("softmax", |v| v[0].softmax(1usize), vec![vec![3, 6]]),
        ("log_softmax", |v| v[0].log_softmax(0usize), vec![vec![4, 3]]),
        (
            "conv2d",
            |v| {
                v[0].conv2d(
                    &v[1],
                    Some(&v[2]),
                    kiln_tensor::ops::conv::Conv2dParams {
                        padding: (1, 1),
                        ..Default::default()
                    },
                )
            },
            vec![vec![2, 2, 5, 4], vec![3, 2, 3, 3], vec![3]],
        ),
        (
            "max_pool2d",
            |v| v[0].max_pool2d((2, 2), (2, 2), (0, 0)),
            vec![vec![1, 2, 4, 6]],
        ),
        (
            "cross-entropy",
            |v| v[0].log_softmax_nll(&targets()),
            vec![vec![3, 5]],
        ),
    ];
    for device in devices() {
        for (name, f, shapes) in &cases {
            let inputs: Vec<Tensor> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| randn(s, 10 + i as u64, device))
                .collect();
            gradcheck(f, &inputs, opts()).unwrap_or_else(|e| panic!("{name} on {device}: {e}"));
        }
    }
}
