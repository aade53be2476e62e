"""What only this course needs: exercises, widgets, the curriculum map and notebook experiments."""
