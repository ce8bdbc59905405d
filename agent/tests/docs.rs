//! The README's metric reference and collector table stay true to the code.

use podstat::collector::COLLECTORS;

const README: &str = include_str!("../../README.md");

#[test]
fn every_collector_is_in_the_readme_table() {
    for spec in COLLECTORS {
        let default = if spec.default_enabled { "on" } else { "off" };
        let row = format!("| `{}` | {default} |", spec.name);
        assert!(README.contains(&row), "README collector table lacks {row}");
    }
}

#[test]
fn every_exported_family_is_documented() {
    for family in podstat::collector::family::all() {
        let name = family.exposed;
        assert!(
            README.contains(&format!("`{name}`")),
            "README metric reference lacks `{name}`"
        );
    }
}
