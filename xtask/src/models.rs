//! `cargo xtask models`: the registry as a table or JSON.

use kiln::nn::Scope;
use kiln::tensor::{DType, Device};

/// Options of `cargo xtask models`.
#[derive(clap::Args)]
pub struct ModelsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for e in kiln::models()? {
        // Building with the default config gives the exact parameter count.
        let model = (e.build)(&(e.default_config)(), Scope::init(0, DType::F32, Device::Cpu))?;
        rows.push((e, model.num_parameters()));
    }
    if args.json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(e, n)| {
                serde_json::json!({
                    "name": e.name, "family": e.family, "task": e.task.as_str(),
                    "parameters": n, "description": e.description, "default_config": (e.default_config)(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    // The name column is as wide as the longest name.
    let w = rows.iter().map(|(e, _)| e.name.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<w$} {:<8} {:<23} {:>12}  description",
        "name", "family", "task", "parameters"
    );
    for (e, n) in rows {
        println!(
            "{:<w$} {:<8} {:<23} {:>12}  {}",
            e.name,
            e.family,
            e.task.as_str(),
            n,
            e.description
        );
    }
    Ok(())
}
