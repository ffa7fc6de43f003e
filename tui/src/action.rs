//! Named actions: what a key, a mouse click or a palette command asks the console to do. Keymaps
//! bind keys to these names, the `:` palette runs them by name, and help is generated from them.

use std::fmt;
use std::str::FromStr;

/// Every action the console knows, with its name (as written in keymaps and the palette), a
/// one-line description, and whether it changes an agent's state.
macro_rules! actions {
    ($($variant:ident = $name:literal, $desc:literal, $mutating:literal;)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Action { $($variant,)* }

        impl Action {
            pub const ALL: &'static [Action] = &[$(Action::$variant,)*];

            pub fn name(self) -> &'static str {
                match self { $(Action::$variant => $name,)* }
            }

            pub fn desc(self) -> &'static str {
                match self { $(Action::$variant => $desc,)* }
            }

            /// Changes an agent's state: hidden and refused under `--readonly`.
            pub fn mutating(self) -> bool {
                match self { $(Action::$variant => $mutating,)* }
            }
        }
    };
}

actions! {
    Quit = "app.quit", "Quit the console", false;
    Help = "app.help", "Show the keys of the active keymap", false;
    Palette = "app.palette", "Open the command palette", false;
    Filter = "app.filter", "Filter the current view", false;
    Back = "app.back", "Close the dialog, clear the filter, or go back", false;
    Overview = "view.overview", "Cluster overview: nodes, devices, memory, health", false;
    Memory = "view.memory", "Device memory map: regions, shared views, copies in flight", false;
    Placement = "view.placement", "Expert placement: layers x experts by device, heat", false;
    Operations = "view.operations", "Operations and migrations: progress, rate, ETA", false;
    Serving = "view.serving", "Serving: throughput, TTFT, TPOT, SLO attainment", false;
    Events = "view.events", "Events of every node", false;
    NextView = "view.next", "Next view", false;
    PrevView = "view.prev", "Previous view", false;
    Up = "nav.up", "Move up", false;
    Down = "nav.down", "Move down", false;
    Left = "nav.left", "Move left", false;
    Right = "nav.right", "Move right", false;
    PageUp = "nav.page_up", "Page up", false;
    PageDown = "nav.page_down", "Page down", false;
    Top = "nav.top", "Go to the top", false;
    Bottom = "nav.bottom", "Go to the bottom", false;
    Select = "nav.select", "Open the selection", false;
    NextNode = "node.next", "Next node", false;
    PrevNode = "node.prev", "Previous node", false;
    ScaleUp = "scale.up", "Plan a scale-up by one TP group (confirm required)", true;
    ScaleDown = "scale.down", "Plan a scale-down by one TP group (confirm required)", true;
    ScaleTo = "scale.to", "Plan a scaling step to a config you type (confirm required)", true;
    Rebalance = "scale.rebalance", "Rebalance experts from the measured load (confirm required)", true;
    CancelOp = "scale.cancel", "Cancel the running operation (before its switchover)", true;
    Confirm = "dialog.confirm", "Confirm the dialog", false;
    Dismiss = "dialog.dismiss", "Dismiss the dialog", false;
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Action::ALL
            .iter()
            .copied()
            .find(|a| a.name() == s)
            .ok_or_else(|| format!("`{s}` is not an action (`emoe config print` lists them)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut names: Vec<_> = Action::ALL.iter().map(|a| a.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Action::ALL.len());
        for a in Action::ALL {
            assert_eq!(a.name().parse::<Action>(), Ok(*a));
        }
        assert!(
            "scale.nope"
                .parse::<Action>()
                .unwrap_err()
                .contains("scale.nope")
        );
    }
}
