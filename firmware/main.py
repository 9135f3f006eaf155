# Run at boot by MicroPython; the firmware itself is the compiled `panel` module.
import panel

panel.run()
