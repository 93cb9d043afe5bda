//! `baton config [--json]`: the effective settings and where each came from. The store URL is
//! shown with its password hidden.

use std::process::ExitCode;

use baton::fmt_duration;
use serde_json::json;

use crate::config::Settings;
use crate::failure::Failure;
use crate::output::{DIM, HEADING, say};

pub fn run(settings: &Settings, json: bool) -> Result<ExitCode, Failure> {
    let options = &settings.options;
    let values = [
        ("store", settings.store_display()),
        ("key", settings.key.clone()),
        ("id", options.effective_instance_id()),
        ("lease", fmt_duration(options.lease_duration)),
        ("renew", fmt_duration(options.renew_interval)),
        ("grace", fmt_duration(options.grace_period)),
    ];
    let origin = |name: &str| {
        settings
            .origins
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("default", |(_, o)| o.as_str())
            .to_owned()
    };
    if json {
        let mut object = serde_json::Map::new();
        for (name, value) in &values {
            object.insert(
                (*name).to_owned(),
                json!({ "value": value, "source": origin(name) }),
            );
        }
        println!("{}", serde_json::Value::Object(object));
    } else {
        let width = values.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        for (name, value) in &values {
            say(format!(
                "{HEADING}{name:width$}{HEADING:#}  {value}  {DIM}({}){DIM:#}\n",
                origin(name)
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}
