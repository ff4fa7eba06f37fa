//! What every admin subcommand of `sluice` shares: the bootstrap and output flags, table
//! and JSON printing, and exit codes that tell a script what happened.

use std::fmt;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use sluice_client::admin::AdminConfig;
use sluice_client::{Admin, ClientError};

/// Exit codes, documented in `--help` of the admin subcommands and the crate README.
pub mod exit {
    pub const OK: u8 = 0;
    /// The operation failed (the broker answered with an error).
    pub const FAILED: u8 = 1;
    /// Usage error: clap's own code for a bad command line (clap exits with it itself).
    #[allow(dead_code)]
    pub const USAGE: u8 = 2;
    /// The topic or group does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// No broker answered at the address.
    pub const UNREACHABLE: u8 = 4;
}

/// The `--help` paragraph listing the exit codes.
pub const EXIT_CODES_HELP: &str = "Exit codes:\n  0  ok\n  1  the operation failed (the broker answered with an error)\n  2  usage error\n  3  not found (unknown topic or group)\n  4  cannot reach the broker";

/// How long one admin request may take (`request.timeout.ms` of the admin client).
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;

#[derive(Clone, Copy, ValueEnum, Default, Debug, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// `-b/--bootstrap` and `-o/--output`, shared by every admin subcommand.
#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    /// Bootstrap broker, host:port.
    #[arg(
        long,
        short = 'b',
        global = true,
        default_value = "127.0.0.1:9092",
        env = "SLUICE_BOOTSTRAP"
    )]
    pub bootstrap: String,
    /// Output format: `table` for people, `json` (one document on stdout) for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// An error that knows its exit code and says what to do next.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// A "does not exist" error (exit code 3).
pub fn not_found(message: String) -> anyhow::Error {
    CliError {
        code: exit::NOT_FOUND,
        message,
    }
    .into()
}

/// The message for an address nothing answers on.
pub fn unreachable_message(bootstrap: &str) -> String {
    format!(
        "cannot reach {bootstrap}: is a broker running? start one with `sluice serve`, \
         or point -b/--bootstrap (or SLUICE_BOOTSTRAP) at one"
    )
}

/// Connects an admin client, turning "nothing listens there" into exit code 4.
pub async fn connect(common: &CommonArgs) -> anyhow::Result<Admin> {
    let config = AdminConfig {
        request_timeout_ms: REQUEST_TIMEOUT_MS,
        ..AdminConfig::default()
    };
    match Admin::connect_with(&common.bootstrap, config).await {
        Ok(admin) => Ok(admin),
        Err(error) if error.is_unreachable() => Err(anyhow::Error::new(error).context(CliError {
            code: exit::UNREACHABLE,
            message: unreachable_message(&common.bootstrap),
        })),
        Err(error) => Err(anyhow::Error::new(error)
            .context(format!("cannot talk to the broker at {}", common.bootstrap))),
    }
}

/// `message` (which says what to do about `error`) with the exit code `error` calls for.
pub fn client_failure(error: &ClientError, message: String) -> anyhow::Error {
    let code = if error.is_unreachable() {
        exit::UNREACHABLE
    } else if error.is_not_found() {
        exit::NOT_FOUND
    } else {
        exit::FAILED
    };
    CliError { code, message }.into()
}

/// The exit code for an error: a [`CliError`]'s own, else from the client error in the
/// chain (not found: 3, unreachable: 4), else 1.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    // anyhow finds a context's type through nested contexts; `chain` finds sources.
    if let Some(cli) = error.downcast_ref::<CliError>() {
        return cli.code;
    }
    for cause in error.chain() {
        if let Some(cli) = cause.downcast_ref::<CliError>() {
            return cli.code;
        }
    }
    let sources = error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<ClientError>());
    for client in error
        .downcast_ref::<ClientError>()
        .into_iter()
        .chain(sources)
    {
        if client.is_unreachable() {
            return exit::UNREACHABLE;
        }
        if client.is_not_found() {
            return exit::NOT_FOUND;
        }
    }
    exit::FAILED
}

/// Ends an admin subcommand: prints the error on stderr (`error: ...`) and maps it to
/// its exit code.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(exit_code(&error))
        }
    }
}

/// How long the next poll of a consuming command may wait: at most `poll_ms_max`, and no
/// longer than what is left of `idle_timeout_ms` since `last_activity`; `None` once the
/// command has been idle for `idle_timeout_ms` (time to exit).
pub fn poll_wait_ms(
    last_activity: std::time::Instant,
    idle_timeout_ms: Option<u64>,
    poll_ms_max: u64,
) -> Option<u64> {
    let Some(idle_ms) = idle_timeout_ms else {
        return Some(poll_ms_max);
    };
    let idle = u64::try_from(last_activity.elapsed().as_millis()).unwrap_or(u64::MAX);
    (idle < idle_ms).then(|| (idle_ms - idle).min(poll_ms_max))
}

/// Parses `KEY=VALUE` (for `--config` and `--set`); a bad one is a usage error.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("expected KEY=VALUE, got `{text}`")),
    }
}

/// Prints `value` as one pretty JSON document on stdout.
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints aligned columns with a header line.
pub fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    for line in table_lines(headers, rows) {
        println!("{line}");
    }
}

fn table_lines(headers: &[&str], rows: Vec<Vec<String>>) -> Vec<String> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut lines = vec![line(headers.iter().map(|h| h.to_string()).collect())];
    lines.extend(rows.into_iter().map(line));
    lines
}

/// A list of broker ids as `1,2,3`.
pub fn ids(ids: &[i32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {

    #[test]
    fn poll_waits_shrink_to_the_idle_timeout_and_end_it() {
        let now = std::time::Instant::now();
        assert_eq!(poll_wait_ms(now, None, 500), Some(500));
        assert!(poll_wait_ms(now, Some(10_000), 500) == Some(500));
        let wait = poll_wait_ms(now, Some(100), 500).unwrap();
        assert!(wait <= 100 && wait > 0);
        let long_ago = now - std::time::Duration::from_secs(5);
        assert_eq!(poll_wait_ms(long_ago, Some(1_000), 500), None);
    }

    use super::*;

    #[test]
    fn tables_align_columns() {
        let lines = table_lines(
            &["TOPIC", "PARTITIONS"],
            vec![
                vec!["a-long-name".into(), "3".into()],
                vec!["b".into(), "12".into()],
            ],
        );
        assert_eq!(
            lines,
            vec![
                "TOPIC        PARTITIONS",
                "a-long-name  3",
                "b            12"
            ]
        );
    }

    #[test]
    fn key_values_parse() {
        assert_eq!(
            parse_key_value("retention.ms=1000"),
            Ok(("retention.ms".to_string(), "1000".to_string()))
        );
        assert_eq!(
            parse_key_value("a=b=c"),
            Ok(("a".to_string(), "b=c".to_string()))
        );
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
    }

    #[test]
    fn exit_codes_follow_the_error() {
        let not_found_error = anyhow::Error::new(ClientError::Kafka {
            operation: "describing topic `x`".into(),
            code: 3,
            name: "UNKNOWN_TOPIC_OR_PARTITION".into(),
            message: None,
        });
        assert_eq!(exit_code(&not_found_error), exit::NOT_FOUND);
        let failed = anyhow::Error::new(ClientError::Kafka {
            operation: "creating topic `x`".into(),
            code: 36,
            name: "TOPIC_ALREADY_EXISTS".into(),
            message: None,
        });
        assert_eq!(exit_code(&failed), exit::FAILED);
        let unreachable = anyhow::Error::new(ClientError::Connect {
            address: "127.0.0.1:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        })
        .context("cannot list topics");
        assert_eq!(exit_code(&unreachable), exit::UNREACHABLE);
        assert_eq!(exit_code(&not_found("group `g` does not exist".into())), 3);
        assert_eq!(exit_code(&anyhow::anyhow!("anything else")), exit::FAILED);
    }

    #[test]
    fn help_lists_every_exit_code() {
        for code in [
            exit::OK,
            exit::FAILED,
            exit::USAGE,
            exit::NOT_FOUND,
            exit::UNREACHABLE,
        ] {
            assert!(EXIT_CODES_HELP.contains(&format!("  {code}  ")));
        }
    }
}
