use kiln::tensor::io::safetensors::{load_from_bytes, save_to_bytes};

/// The safetensors reader; what it accepts saves and loads back with the same names, dtypes and
/// shapes.
pub fn safetensors(data: &[u8]) {
    let Ok(tensors) = load_from_bytes(data) else {
        return;
    };
    let Ok(again) = save_to_bytes(tensors.iter().map(|(k, t)| (k.clone(), t.clone()))) else {
        return;
    };
    let back = load_from_bytes(&again).expect("a file kiln wrote loads back");
    assert_eq!(back.len(), tensors.len());
    for (name, t) in &tensors {
        let b = &back[name];
        assert_eq!((b.dtype(), b.dims()), (t.dtype(), t.dims()), "{name}");
    }
}
