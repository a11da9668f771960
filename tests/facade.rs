//! Integration tests of the facade crate.

#[test]
fn facade_reexports_tensor() {
    let t = kiln::tensor::Tensor::arange(0.0, 4.0, 1.0, kiln::tensor::DType::F32, kiln::tensor::Device::Cpu)
        .unwrap();
    assert_eq!(t.sum_all().unwrap().to_scalar::<f32>().unwrap(), 6.0);
    assert!(kiln::CRATES.contains(&"kiln-tensor"));
}
