//! Security decisions as pure functions, unit-tested here and called by thin layers:
//!
//! - `outbound`: which addresses the HTTP executor may connect to (CIDR policy), used
//!   by handler validation (literal addresses in URLs) and at connect time (every
//!   resolved address);
//! - `script_file`: whether a script file and the directories leading to it are safe
//!   to run (owner and write bits, as ssh and sudo judge such files), and which
//!   account scripts run as.

pub mod outbound;
pub mod script_file;
