//! Memory: 1,000 training steps of a small MLP leave no graph node and no tensor byte behind.
//! (Its own test binary: the counters are process-wide.)

use kiln_autograd::{live_graph_nodes, Var};
use kiln_tensor::{live_storage_bytes, DType, Device, Tensor, TensorRng};

#[test]
fn graph_and_tensor_memory_return_to_baseline_every_step() {
    let mut rng = TensorRng::new(0);
    let x = Tensor::randn([16, 32], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
    let y = Tensor::from_vec((0..16).map(|i| (i % 4) as i64).collect::<Vec<_>>(), [16]).unwrap();
    let mut params = [
        Tensor::randn([32, 16], 0.0, 0.2, DType::F32, Device::Cpu, &mut rng).unwrap(),
        Tensor::zeros([16], DType::F32, Device::Cpu).unwrap(),
        Tensor::randn([16, 4], 0.0, 0.2, DType::F32, Device::Cpu, &mut rng).unwrap(),
        Tensor::zeros([4], DType::F32, Device::Cpu).unwrap(),
    ];
    let mut baseline = None;
    let mut first_loss = None;
    let mut last_loss = 0.0;
    for _step in 0..1000 {
        {
            let p: Vec<Var> = params.iter().cloned().map(Var::parameter).collect();
            let xv = Var::constant(x.clone());
            let h = xv.matmul(&p[0]).unwrap().add(&p[1]).unwrap().relu().unwrap();
            let loss = h
                .matmul(&p[2])
                .unwrap()
                .add(&p[3])
                .unwrap()
                .log_softmax_nll(&y)
                .unwrap();
            last_loss = loss.value().to_scalar::<f32>().unwrap();
            first_loss.get_or_insert(last_loss);
            let grads = loss.backward().unwrap();
            for (t, v) in params.iter_mut().zip(&p) {
                *t = t.sub(&grads.get(v).unwrap().mul_scalar(0.1).unwrap()).unwrap();
            }
        }
        let now = (live_graph_nodes(), live_storage_bytes());
        match baseline {
            None => baseline = Some(now),
            Some(b) => assert_eq!(now, b, "graph nodes / tensor bytes grew"),
        }
    }
    assert_eq!(baseline.unwrap().0, 0, "no graph node outlives its step");
    assert!(
        last_loss < first_loss.unwrap() * 0.5,
        "the MLP learns: {first_loss:?} -> {last_loss}"
    );
}
