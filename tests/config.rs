//! Configuration: defaults documented and parseable, overrides, unknown keys refused.

use fedhex::config::{default_toml, documented_keys, RunConfig};

#[test]
fn default_toml_parses_back_to_the_defaults_and_documents_every_key() {
    let text = default_toml();
    let cfg = RunConfig::from_toml(&text, &[], "default").unwrap();
    assert_eq!(cfg, RunConfig::default());
    assert!(!text.contains("(undocumented)"), "a key lacks documentation:\n{text}");
    // every documented key appears exactly once as a key line
    for k in documented_keys() {
        let key = k.split('.').nth(1).unwrap();
        assert!(text.lines().any(|l| l.starts_with(&format!("{key} = "))), "{k} missing from the default output");
    }
    let table: toml::Table = toml::from_str(&text).unwrap();
    let n: usize = table.values().map(|v| v.as_table().map_or(0, |t| t.len())).sum();
    assert_eq!(n, documented_keys().len());
}

#[test]
fn set_overrides_any_key() {
    let cfg = RunConfig::from_toml(
        "[network]\nhidden = [8]\n",
        &["network.hidden=[64,64]".into(), "training.device=cpu".into(), "training.epochs = 3".into()],
        "t",
    )
    .unwrap();
    assert_eq!(cfg.network.hidden, vec![64, 64]);
    assert_eq!(cfg.training.device, "cpu");
    assert_eq!(cfg.training.epochs, 3);
    let sets = fedhex::config::overrides(&["training.epochs=2".into()], Some("0.0.0.0:50051"));
    let cfg = RunConfig::from_toml("", &sets, "t").unwrap();
    assert_eq!((cfg.control.listen.as_str(), cfg.training.epochs), ("0.0.0.0:50051", 2));
}

#[test]
fn unknown_keys_and_bad_values_are_errors_naming_them() {
    let e = RunConfig::from_toml("[network]\nhiden = [8]\n", &[], "run.toml").unwrap_err().to_string();
    assert!(e.contains("hiden") && e.contains("run.toml"), "{e}");
    let e = RunConfig::from_toml("", &["trainig.epochs=3".into()], "t").unwrap_err().to_string();
    assert!(e.contains("trainig"), "{e}");
    let e = RunConfig::from_toml("", &["network.activation=sigmoidal".into()], "t").unwrap_err().to_string();
    assert!(e.contains("sigmoidal"), "{e}");
    let e = RunConfig::from_toml("[training]\nepochs = 0\n", &[], "t").unwrap_err().to_string();
    assert!(e.contains("training.epochs"), "{e}");
    let e = RunConfig::from_toml("", &["training.device=tpu".into()], "t").unwrap_err().to_string();
    assert!(e.contains("tpu"), "{e}");
    let e = RunConfig::from_toml("", &["network".into()], "t").unwrap_err().to_string();
    assert!(e.contains("section.key=value"), "{e}");
    for bad in ["training.step_timeout=2", "training.step_timeout=-1", "training.step_timeout=nan"] {
        let e = RunConfig::from_toml("", &[bad.into()], "t").unwrap_err().to_string();
        assert!(e.contains("training.step_timeout must be 0 (off) or at least 5"), "{bad}: {e}");
    }
    for bad in ["control.stall_seconds=0", "control.stall_seconds=inf"] {
        let e = RunConfig::from_toml("", &[bad.into()], "t").unwrap_err().to_string();
        assert!(e.contains("control.stall_seconds must be at least 5"), "{bad}: {e}");
    }
}

#[test]
fn the_stall_keys_default_to_a_report_after_five_minutes_and_no_timeout() {
    let cfg = RunConfig::default();
    assert_eq!((cfg.control.stall_seconds, cfg.training.step_timeout), (300.0, 0.0));
    // Whole numbers are seconds too.
    let cfg =
        RunConfig::from_toml("[training]\nstep_timeout = 600\n[control]\nstall_seconds = 60\n", &[], "t").unwrap();
    assert_eq!((cfg.control.stall_seconds, cfg.training.step_timeout), (60.0, 600.0));
}
