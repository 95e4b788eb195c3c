//! `gateway`: see `gateway --help`.

use clap::Parser;

// Table builds and per-request buffers allocate a lot; mimalloc measured 12% faster
// builds than glibc's malloc (config-sync/benches/table.rs), and is called
// the way it is fastest (gateway/src/alloc.rs). The `system-alloc` feature
// leaves glibc's malloc in place, for heap profilers that hook it (heaptrack).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOC: gateway::alloc::Mimalloc = gateway::alloc::Mimalloc;
use gateway::cli::{Cli, Command, LogFormat};

// Before anything allocates (so before `main`, whose runtime set-up does),
// mimalloc is told to give freed memory back (see `return_freed_memory`):
// a constructor of the lowest priority number runs first.
#[cfg(all(target_os = "linux", not(feature = "system-alloc")))]
#[used]
#[link_section = ".init_array.00000"]
static RETURN_FREED_MEMORY: extern "C" fn() = gateway::alloc::return_freed_memory;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format)?;
    match cli.command {
        Command::Serve(args) => gateway::serve::run(*args),
        Command::Demo(args) => gateway::demo::run(*args),
    }
}

fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid --log filter {filter:?}: {e}"))?;
    // Logs go to stderr, so stdout carries only what a command prints for people (the demo's intro).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // pingora logs through the `log` crate; tracing-subscriber bridges it.
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}
