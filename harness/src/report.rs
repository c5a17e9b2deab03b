//! The summary table the benchmarks print (`cargo bench -p rjs --bench grid`, `--bench wan`):
//! one row per figure, with its target and whether it was met.

/// One line of the summary table.
pub struct Row {
    pub what: String,
    pub figure: String,
    pub target: String,
    /// `None`: informational.
    pub met: Option<bool>,
}

impl Row {
    /// A figure without a target.
    pub fn info(what: impl Into<String>, figure: impl Into<String>) -> Row {
        Row {
            what: what.into(),
            figure: figure.into(),
            target: String::new(),
            met: None,
        }
    }

    /// A figure and whether it met its target.
    pub fn target(
        what: impl Into<String>,
        figure: impl Into<String>,
        target: impl Into<String>,
        met: bool,
    ) -> Row {
        Row {
            what: what.into(),
            figure: figure.into(),
            target: target.into(),
            met: Some(met),
        }
    }

    /// Whether every row with a target met it.
    pub fn all_met(rows: &[Row]) -> bool {
        rows.iter().all(|r| r.met != Some(false))
    }
}

/// Prints the rows as a Markdown table under `== summary ==`.
pub fn print_table(rows: &[Row]) {
    // A column is as wide as its widest cell, and its heading.
    let width = |cell: fn(&Row) -> &str, heading: &str| {
        rows.iter()
            .map(|r| cell(r).chars().count())
            .fold(heading.len(), usize::max)
    };
    let w0 = width(|r| &r.what, "what");
    let w1 = width(|r| &r.figure, "figure");
    let w2 = width(|r| &r.target, "target");
    println!("\n== summary ==\n");
    println!(
        "| {:w0$} | {:w1$} | {:w2$} | met |",
        "what", "figure", "target"
    );
    println!(
        "| {} | {} | {} | --- |",
        "-".repeat(w0),
        "-".repeat(w1),
        "-".repeat(w2)
    );
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        println!(
            "| {:w0$} | {:w1$} | {:w2$} | {met:3} |",
            r.what, r.figure, r.target
        );
    }
    println!();
}
