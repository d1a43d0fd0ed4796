package leader

// ConfigOf is the configuration e runs with, defaults applied.
func ConfigOf(e *Elector) Config { return e.cfg }
