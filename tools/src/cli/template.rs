//! `dualcaster template` and `dualcaster schedules`: the template's generated blocks and deployment rules,
//! the docs' generated schedules table, and every schedule's next fire times.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use chrono::Utc;

use crate::args::TemplateAction;

pub fn template_command(action: TemplateAction, path: &Path, docs: &Path) -> Result<()> {
    use dualcaster_tools::{generated_docs, infra};
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let registry = dualcaster::tasks::registry();
    if let Err(problems) = registry.validate_schedules() {
        bail!("invalid schedules:\n  {}", problems.join("\n  "));
    }
    let read_docs =
        || std::fs::read_to_string(docs).with_context(|| format!("reading {}", docs.display()));
    match action {
        TemplateAction::Sync => {
            let synced = infra::sync(&text, &registry)?;
            if synced == text {
                eprintln!("{} is up to date", path.display());
            } else {
                std::fs::write(path, synced)?;
                eprintln!(
                    "rewrote the generated blocks (schedules; dashboard and alarms) of {}",
                    path.display()
                );
            }
            let page = read_docs()?;
            let synced = generated_docs::sync_operating(&page, &registry)
                .with_context(|| format!("{}", docs.display()))?;
            if synced == page {
                eprintln!("{} is up to date", docs.display());
            } else {
                std::fs::write(docs, synced)?;
                eprintln!("rewrote the schedules table of {}", docs.display());
            }
            Ok(())
        }
        TemplateAction::Infra => {
            let (plain, dropped) = infra::without_functions(&text)?;
            eprintln!("left out: {}", dropped.join(", "));
            print!("{plain}");
            Ok(())
        }
        TemplateAction::Check => {
            infra::check_drift(&text, &registry)?;
            let problems = infra::check_invariants(&text)?;
            if !problems.is_empty() {
                bail!(
                    "{} breaks deployment rules:\n  {}",
                    path.display(),
                    problems.join("\n  ")
                );
            }
            generated_docs::check_operating(&read_docs()?, &registry)
                .with_context(|| format!("{}", docs.display()))?;
            eprintln!(
                "{}: the generated blocks (schedules; dashboard and alarms) match the registry and the \
                 deployment rules hold; {}: the schedules table matches the registry",
                path.display(),
                docs.display()
            );
            Ok(())
        }
    }
}

pub fn list_schedules(next: usize) -> Result<()> {
    use dualcaster::schedule::ScheduleExpression;
    let registry = dualcaster::tasks::registry();
    let now = Utc::now();
    for (spec, schedule) in registry.schedules() {
        let expr: ScheduleExpression = schedule
            .expression
            .parse()
            .map_err(|e| anyhow!("task `{}`, schedule `{}`: {e}", spec.name, schedule.name))?;
        println!(
            "{:<22} {:<10} {:<24} {}{}",
            schedule.rule_name(spec.name),
            spec.queue,
            schedule.expression,
            schedule.kwargs,
            if schedule.enabled { "" } else { "  (disabled)" }
        );
        for t in expr.upcoming(now, next) {
            println!("{:<22} next: {}", "", t.format("%Y-%m-%d %a %H:%M UTC"));
        }
        println!(
            "{:<22} why: {}",
            "",
            schedule
                .why
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}
